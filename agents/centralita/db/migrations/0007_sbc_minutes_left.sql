-- SBC hot path, part 1: the minutes a capped customer has left, to the millisecond: the SBC cuts a
-- running call when they run out, and a whole-second floor would cut it early.
-- sbc_customer_sources gains seconds_left (exact; NULL without a cap) beside
-- minutes_left_s (whole seconds, as before).
CREATE OR REPLACE VIEW sbc_customer_sources AS
SELECT
    ci.customer_id,
    ci.ip_addr,
    ci.prefix_len,
    ci.tech_prefix,
    IF(IS_IPV4(ci.ip_addr), INET_ATON(ci.ip_addr) & ((0xFFFFFFFF << (32 - LEAST(ci.prefix_len, 32))) & 0xFFFFFFFF), NULL)
        AS net_v4,
    IF(IS_IPV4(ci.ip_addr), (0xFFFFFFFF << (32 - LEAST(ci.prefix_len, 32))) & 0xFFFFFFFF, NULL) AS mask_v4,
    c.max_cps,
    c.max_channels,
    c.dialing_plan_id,
    c.lcr_allow_loss,
    c.monthly_minutes_limit,
    IF(c.monthly_minutes_limit IS NULL, NULL,
       GREATEST(0, FLOOR(c.monthly_minutes_limit * 60
           - IF(c.minutes_period_start >= DATE_FORMAT(UTC_DATE(), '%Y-%m-01'), c.minutes_used, 0) * 60)))
        AS minutes_left_s,
    IF(c.monthly_minutes_limit IS NULL, NULL,
       GREATEST(0, c.monthly_minutes_limit * 60
           - IF(c.minutes_period_start >= DATE_FORMAT(UTC_DATE(), '%Y-%m-01'), c.minutes_used, 0) * 60))
        AS seconds_left
FROM customer_ips ci
JOIN customers c ON c.id = ci.customer_id
WHERE ci.active = 1 AND c.active = 1;

-- Permissions (modparam address_table): group 1 = customer sources (tag = the
-- customer id), group 2 = blacklisted sources still in force, and group 9 = one
-- pseudo address whose tag is the moment the list was read. Kamailio keys its
-- in-memory answers (customers by source, routes by number) with that tag, so
-- every reload of the address list (`centralita kamailio sync`, the panel's
-- save, the minutely housekeeping) starts them afresh. The pseudo row comes
-- from a one-row table so its columns keep the types Kamailio checks (a
-- literal would turn the union's mask into a DECIMAL, which it refuses).
CREATE TABLE IF NOT EXISTS kam_address_generation (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    grp INT NOT NULL,
    ip_addr VARCHAR(45) NOT NULL,
    prefix_len TINYINT UNSIGNED NOT NULL,
    port INT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT IGNORE INTO kam_address_generation (id, grp, ip_addr, prefix_len, port) VALUES (1, 9, '0.0.0.0', 32, 0);

CREATE OR REPLACE VIEW kam_address AS
SELECT
    ci.id * 2 AS id,
    1 AS grp,
    ci.ip_addr AS ip_addr,
    ci.prefix_len AS mask,
    0 AS port,
    CAST(ci.customer_id AS CHAR) AS tag
FROM customer_ips ci
JOIN customers c ON c.id = ci.customer_id
WHERE ci.active = 1 AND c.active = 1
UNION ALL
SELECT
    b.id * 2 + 1 AS id,
    2 AS grp,
    b.ip_addr AS ip_addr,
    b.prefix_len AS mask,
    0 AS port,
    b.source AS tag
FROM ip_blacklist b
WHERE b.expires_at IS NULL OR b.expires_at > UTC_TIMESTAMP(3)
UNION ALL
SELECT
    g.id * 2 AS id,
    g.grp AS grp,
    g.ip_addr AS ip_addr,
    g.prefix_len AS mask,
    g.port AS port,
    DATE_FORMAT(UTC_TIMESTAMP(6), '%Y%m%d%H%i%s%f') AS tag
FROM kam_address_generation g;
