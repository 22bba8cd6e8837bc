#!/usr/bin/python3
"""Service accounts and their exact grants, in one pass over MariaDB.

The mariadb role's accounts and grants: every account (service x client host)
exists with its password, and, when ``grants`` is given, holds exactly the
listed privileges on the schema (``table: '*'``) or on single tables, and
nothing else. One connection and one module run for all of them, where
``mysql_user`` needs a run per account.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: centralita_db_accounts
short_description: Centralita's MariaDB service accounts with exact grants
description:
  - Creates each account, sets its password when it differs, and (with C(manage_grants))
    replaces its privileges by exactly the given list.
options:
  login_unix_socket:
    description: Socket of the server, reached as the connecting OS user (root, unix_socket auth).
    type: str
    required: true
  database:
    description: The schema the grants apply to.
    type: str
    required: true
  user_prefix:
    description: Prefix of every account name (service C(panel) logs in as C(<prefix>panel)).
    type: str
    required: true
  client_hosts:
    description: Hosts every service account may connect from (one account per service and host).
    type: list
    elements: str
    required: true
  services:
    description: Service name -> list of {table, privs}; C(table) is C(*) (the schema) or a table name.
    type: dict
    required: true
  passwords:
    description: Service name -> password.
    type: dict
    required: true
  only:
    description: Handle only these services (default all of C(services)).
    type: list
    elements: str
    default: []
  allow_missing_tables:
    description:
      - Leave out grants on tables that do not exist yet (they come with a later migration or
        role) and return them in C(missing_tables). When false, such a grant fails the task.
    type: bool
    default: false
  manage_grants:
    description: Also make each account's privileges exactly its grants (false only creates accounts).
    type: bool
    default: true
  grants_only:
    description: With C(manage_grants), set the grants of these services only (default every handled service).
    type: list
    elements: str
    default: []
  create_database:
    description: Create the schema first when it does not exist (utf8mb4, utf8mb4_unicode_ci).
    type: bool
    default: false
"""

import re

from ansible.module_utils.basic import AnsibleModule

try:
    import pymysql
except ImportError:  # reported by main()
    pymysql = None

IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,64}$")
HOST = re.compile(r"^[A-Za-z0-9_.:%-]{1,255}$")
PRIVILEGE = re.compile(r"^[A-Z]+( [A-Z]+)*$")


def _account(cursor, user: str, host: str) -> str:
    return "%s@%s" % (cursor.connection.escape(user), cursor.connection.escape(host))


def _desired(grants: list[dict]) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for grant in grants:
        wanted.setdefault(grant["table"], set()).update(p.upper() for p in grant["privs"])
    return wanted


def _current(cursor, user: str, host: str, database: str) -> tuple[dict[str, set[str]], set[str]]:
    grantee = "'%s'@'%s'" % (user.replace("'", "''"), host.replace("'", "''"))
    held: dict[str, set[str]] = {}
    cursor.execute(
        "SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
        (grantee, database),
    )
    schema = {row[0] for row in cursor.fetchall()}
    if schema:
        held["*"] = schema
    cursor.execute(
        "SELECT TABLE_NAME, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES"
        " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
        (grantee, database),
    )
    for table, privilege in cursor.fetchall():
        held.setdefault(table, set()).add(privilege)
    # Anything else (global privileges, other schemas, columns, GRANT OPTION) is "extra".
    extra: set[str] = set()
    cursor.execute("SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s", (grantee,))
    extra.update("global " + row[0] for row in cursor.fetchall() if row[0] != "USAGE")
    cursor.execute(
        "SELECT TABLE_SCHEMA FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = %s AND TABLE_SCHEMA <> %s",
        (grantee, database),
    )
    extra.update("schema " + row[0] for row in cursor.fetchall())
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLE_PRIVILEGES"
        " WHERE GRANTEE = %s AND TABLE_SCHEMA <> %s",
        (grantee, database),
    )
    extra.update("table %s.%s" % row for row in cursor.fetchall())
    cursor.execute("SELECT COUNT(*) FROM information_schema.COLUMN_PRIVILEGES WHERE GRANTEE = %s", (grantee,))
    if cursor.fetchone()[0]:
        extra.add("column privileges")
    cursor.execute(
        "SELECT COUNT(*) FROM (SELECT IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = %s"
        " UNION ALL SELECT IS_GRANTABLE FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = %s"
        " UNION ALL SELECT IS_GRANTABLE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s) g"
        " WHERE g.IS_GRANTABLE = 'YES'",
        (grantee, grantee, grantee),
    )
    if cursor.fetchone()[0]:
        extra.add("grant option")
    return held, extra


def _accounts(module: AnsibleModule) -> list[dict]:
    """The accounts to converge, every input checked; a bad one fails naming what is wrong."""
    p = module.params
    if not IDENTIFIER.match(p["database"]):
        module.fail_json(msg="database: %r is not a plain identifier" % p["database"])
    for option in ("only", "grants_only"):
        unknown = sorted(set(p[option]) - set(p["services"]))
        if unknown:
            module.fail_json(msg="%s: no grants are defined for %s" % (option, ", ".join(unknown)))
    accounts = []
    for service in p["only"] or sorted(p["services"]):
        user = p["user_prefix"] + service
        password = p["passwords"].get(service)
        if not isinstance(password, str) or not password:
            module.fail_json(msg="passwords: the %s service has no password" % service)
        grants = p["services"][service] or []
        for grant in grants:
            table, privs = grant.get("table"), grant.get("privs")
            if not isinstance(table, str) or not (table == "*" or IDENTIFIER.match(table)):
                module.fail_json(msg="services.%s: a grant on %r, not '*' or a table name" % (service, table))
            if not isinstance(privs, list) or not all(isinstance(v, str) and PRIVILEGE.match(v.upper()) for v in privs):
                module.fail_json(msg="services.%s: privileges %r on %s" % (service, privs, table))
        for host in p["client_hosts"]:
            if not IDENTIFIER.match(user) or not HOST.match(host):
                module.fail_json(msg="%r@%r is not a plain account name" % (user, host))
            accounts.append(
                {
                    "user": user,
                    "host": host,
                    "password": password,
                    "grants": grants,
                    "manage_grants": p["manage_grants"] and (not p["grants_only"] or service in p["grants_only"]),
                }
            )
    return accounts


def _missing_tables(module: AnsibleModule, cursor, accounts: list[dict]) -> list[str]:
    """Granted tables the schema does not have; fails unless they may wait for their migration."""
    database = module.params["database"]
    named = {g["table"] for account in accounts if account["manage_grants"] for g in account["grants"]} - {"*"}
    if not named:
        return []
    cursor.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,))
    missing = sorted(named - {row[0] for row in cursor.fetchall()})
    if missing and not module.params["allow_missing_tables"]:
        module.fail_json(
            msg="the grants name tables that do not exist in %s: %s. Create them first (centralita db upgrade;"
            " the kamailio role's schema step), or fix the grant table." % (database, ", ".join(missing)),
            missing_tables=missing,
        )
    return missing


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "login_unix_socket": {"type": "str", "required": True},
            "database": {"type": "str", "required": True},
            "user_prefix": {"type": "str", "required": True},
            "client_hosts": {"type": "list", "elements": "str", "required": True},
            "services": {"type": "dict", "required": True},
            "passwords": {"type": "dict", "required": True, "no_log": True},
            "only": {"type": "list", "elements": "str", "default": []},
            "allow_missing_tables": {"type": "bool", "default": False},
            "manage_grants": {"type": "bool", "default": True},
            "grants_only": {"type": "list", "elements": "str", "default": []},
            "create_database": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    if pymysql is None:
        module.fail_json(msg="python3-pymysql is missing on the db host (the mariadb role installs it)")
    accounts = _accounts(module)
    database = module.params["database"]
    changes: list[str] = []
    try:
        connection = pymysql.connect(unix_socket=module.params["login_unix_socket"], user="root", autocommit=True)
    except pymysql.MySQLError as exc:
        module.fail_json(msg="cannot log in to MariaDB as root over %s: %s" % (module.params["login_unix_socket"], exc))
    try:
        with connection.cursor() as cursor:
            if module.params["create_database"]:
                cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))
                if cursor.fetchone() is None:
                    changes.append("created database " + database)
                    if not module.check_mode:
                        cursor.execute(
                            "CREATE DATABASE `%s` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" % database
                        )
            missing = _missing_tables(module, cursor, accounts)
            for account in accounts:
                user, host, password = account["user"], account["host"], account["password"]
                name = _account(cursor, user, host)
                label = "%s@%s" % (user, host)
                cursor.execute(
                    "SELECT IFNULL(JSON_VALUE(Priv, '$.plugin'), ''),"
                    " IFNULL(JSON_VALUE(Priv, '$.authentication_string'), '') FROM mysql.global_priv"
                    " WHERE User = %s AND Host = %s",
                    (user, host),
                )
                row = cursor.fetchone()
                # mysql_native_password, the plugin every client library speaks; its stored
                # hash is PASSWORD(), so a changed password is seen without logging in.
                via = "IDENTIFIED VIA mysql_native_password USING PASSWORD(%s)"
                if row is None:
                    changes.append("created " + label)
                    if not module.check_mode:
                        cursor.execute("CREATE USER %s %s" % (name, via), (password,))
                else:
                    cursor.execute("SELECT PASSWORD(%s)", (password,))
                    if row[0] != "mysql_native_password" or cursor.fetchone()[0] != row[1]:
                        changes.append("password of " + label)
                        if not module.check_mode:
                            cursor.execute("ALTER USER %s %s" % (name, via), (password,))
                if not account["manage_grants"]:
                    continue
                wanted = _desired([g for g in account["grants"] if g["table"] not in missing])
                held, extra = (
                    ({}, set()) if row is None and module.check_mode else _current(cursor, user, host, database)
                )
                if held == wanted and not extra:
                    continue
                changes.append("grants of " + label)
                if module.check_mode:
                    continue
                cursor.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s" % name)
                for table, privs in sorted(wanted.items()):
                    target = "`%s`.*" % database if table == "*" else "`%s`.`%s`" % (database, table)
                    cursor.execute("GRANT %s ON %s TO %s" % (", ".join(sorted(privs)), target, name))
    except pymysql.MySQLError as exc:
        module.fail_json(msg="MariaDB refused a change (%s so far): %s" % (", ".join(changes) or "none", exc))
    finally:
        connection.close()
    module.exit_json(changed=bool(changes), changes=changes, missing_tables=missing)


if __name__ == "__main__":
    main()
