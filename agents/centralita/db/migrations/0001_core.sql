-- Core tables every part of Centralita uses: panel users and API tokens,
-- key/value settings, the alert events table and the audit log.
-- Times are UTC (each session sets time_zone = '+00:00').

CREATE TABLE IF NOT EXISTS users (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(64) NOT NULL,
    email VARCHAR(255) NULL,
    full_name VARCHAR(128) NULL,
    -- werkzeug.security hash ("scrypt:..." / "pbkdf2:..."), never the password
    password_hash VARCHAR(255) NOT NULL,
    role ENUM('admin', 'customer') NOT NULL,
    -- portal users belong to one customer (foreign key added in 0002_sbc.sql)
    customer_id BIGINT UNSIGNED NULL,
    active TINYINT(1) NOT NULL DEFAULT 1,
    failed_logins INT UNSIGNED NOT NULL DEFAULT 0,
    last_login_at DATETIME(3) NULL,
    last_login_ip VARCHAR(45) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_users_username (username),
    KEY ix_users_customer (customer_id),
    -- a customer user without a customer would see every tenant's data
    CONSTRAINT ck_users_customer_role CHECK (role = 'admin' OR customer_id IS NOT NULL)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- API tokens: only a SHA-256 of the token is stored; the prefix lets a user
-- recognise a token in the list without revealing it.
CREATE TABLE IF NOT EXISTS api_tokens (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT UNSIGNED NOT NULL,
    name VARCHAR(100) NOT NULL,
    token_prefix VARCHAR(12) NOT NULL,
    token_sha256 CHAR(64) NOT NULL,
    -- space-separated scopes, e.g. "cdrs:read customers:write"; empty = the user's role decides
    scopes VARCHAR(512) NOT NULL DEFAULT '',
    rate_limit_per_minute INT UNSIGNED NOT NULL DEFAULT 60,
    last_used_at DATETIME(3) NULL,
    last_used_ip VARCHAR(45) NULL,
    expires_at DATETIME(3) NULL,
    revoked_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_api_tokens_sha256 (token_sha256),
    KEY ix_api_tokens_user (user_id),
    CONSTRAINT fk_api_tokens_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- System configuration edited in the panel (alert thresholds, Telegram chat,
-- report schedule...). Values are JSON so numbers, lists and objects keep their type.
CREATE TABLE IF NOT EXISTS settings (
    name VARCHAR(100) NOT NULL PRIMARY KEY,
    value LONGTEXT NOT NULL CHECK (JSON_VALID(value)),
    description VARCHAR(255) NULL,
    updated_by BIGINT UNSIGNED NULL,
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    CONSTRAINT fk_settings_user FOREIGN KEY (updated_by) REFERENCES users (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Alert events: every part (Kamailio, worker, fail2ban sync, fraud, reports)
-- writes a row; the worker delivers them (Telegram, email, webhooks).
-- delivery_state: new -> pending (picked for delivery) -> delivered | failed.
CREATE TABLE IF NOT EXISTS events (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- cps_exceeded, channels_exceeded, carrier_down, carrier_recovered, minutes_warning,
    -- minutes_exhausted, security_ip_blocked, security_flood_detected, fraud_detected, ...
    type VARCHAR(64) NOT NULL,
    severity ENUM('info', 'warning', 'critical') NOT NULL DEFAULT 'info',
    -- who raised it: kamailio, worker, fail2ban, panel, fraud, connector, aicall, collections
    source VARCHAR(32) NOT NULL DEFAULT 'system',
    customer_id BIGINT UNSIGNED NULL,
    carrier_id BIGINT UNSIGNED NULL,
    message VARCHAR(500) NOT NULL DEFAULT '',
    payload LONGTEXT NULL CHECK (payload IS NULL OR JSON_VALID(payload)),
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    delivery_state ENUM('new', 'pending', 'delivered', 'failed') NOT NULL DEFAULT 'new',
    delivery_attempts INT UNSIGNED NOT NULL DEFAULT 0,
    pending_since DATETIME(3) NULL,
    next_attempt_at DATETIME(3) NULL,
    delivered_at DATETIME(3) NULL,
    last_error VARCHAR(500) NULL,
    acknowledged_at DATETIME(3) NULL,
    acknowledged_by BIGINT UNSIGNED NULL,
    KEY ix_events_delivery (delivery_state, created_at),
    KEY ix_events_created (created_at),
    KEY ix_events_type (type, created_at),
    KEY ix_events_customer (customer_id, created_at),
    KEY ix_events_carrier (carrier_id, created_at),
    KEY ix_events_open (acknowledged_at, severity),
    CONSTRAINT fk_events_ack_user FOREIGN KEY (acknowledged_by) REFERENCES users (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Who changed what, from the panel, the API or a command.
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT UNSIGNED NULL,
    -- the username, "api-token:<id>" or a command name, kept even if the user is deleted
    actor VARCHAR(100) NOT NULL,
    action VARCHAR(64) NOT NULL,
    object_type VARCHAR(64) NULL,
    object_id VARCHAR(64) NULL,
    details LONGTEXT NULL CHECK (details IS NULL OR JSON_VALID(details)),
    ip VARCHAR(45) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY ix_audit_created (created_at),
    KEY ix_audit_user (user_id, created_at),
    KEY ix_audit_object (object_type, object_id),
    CONSTRAINT fk_audit_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
