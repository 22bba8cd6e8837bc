-- The wholesale SBC: customers with their limits and source IPs, carriers with
-- state and daily counters, buy/sell rate decks, dialing plans, number
-- normalisation, CDRs with millisecond timing, SIP traces and the IP blacklist.
-- Kamailio reads these (directly or through views the SBC adds) and the panel,
-- portal, API, alerts, fraud checks and reports build on them.

CREATE TABLE IF NOT EXISTS dialing_plans (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    description VARCHAR(255) NULL,
    -- what happens to a number no rule matches
    default_action ENUM('allow', 'deny') NOT NULL DEFAULT 'deny',
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_dialing_plans_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The longest matching prefix decides; priority breaks ties between equal prefixes.
CREATE TABLE IF NOT EXISTS dialing_plan_rules (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    dialing_plan_id BIGINT UNSIGNED NOT NULL,
    prefix VARCHAR(32) NOT NULL,
    action ENUM('allow', 'deny') NOT NULL,
    priority INT NOT NULL DEFAULT 0,
    description VARCHAR(255) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_dialing_plan_rules (dialing_plan_id, prefix),
    KEY ix_dialing_plan_rules_prefix (prefix),
    CONSTRAINT fk_dialing_plan_rules_plan FOREIGN KEY (dialing_plan_id) REFERENCES dialing_plans (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS customers (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(128) NOT NULL,
    company VARCHAR(128) NULL,
    email VARCHAR(255) NULL,
    -- where this customer's alerts go (minutes_warning, cps_exceeded...)
    alert_email VARCHAR(255) NULL,
    alert_telegram_chat_id VARCHAR(64) NULL,
    active TINYINT(1) NOT NULL DEFAULT 1,
    max_cps INT UNSIGNED NOT NULL DEFAULT 10,
    max_channels INT UNSIGNED NOT NULL DEFAULT 10,
    -- NULL = no monthly cap
    monthly_minutes_limit INT UNSIGNED NULL,
    -- billable minutes of the current period, kept current by the SBC on each call end
    minutes_used DECIMAL(14, 4) NOT NULL DEFAULT 0,
    minutes_period_start DATE NULL,
    minutes_warning_pct TINYINT UNSIGNED NOT NULL DEFAULT 80,
    -- set when the alert was raised in this period, cleared at the monthly reset
    minutes_warning_sent_at DATETIME(3) NULL,
    minutes_exhausted_sent_at DATETIME(3) NULL,
    dialing_plan_id BIGINT UNSIGNED NULL,
    currency CHAR(3) NOT NULL DEFAULT 'USD',
    notes TEXT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_customers_name (name),
    KEY ix_customers_dialing_plan (dialing_plan_id),
    CONSTRAINT fk_customers_dialing_plan FOREIGN KEY (dialing_plan_id) REFERENCES dialing_plans (id)
        ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Source-IP authentication. One address (or subnet) may serve several customers
-- only when a tech prefix tells their calls apart.
CREATE TABLE IF NOT EXISTS customer_ips (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id BIGINT UNSIGNED NOT NULL,
    ip_addr VARCHAR(45) NOT NULL,
    prefix_len TINYINT UNSIGNED NOT NULL DEFAULT 32,
    -- digits the customer puts before the number; stripped by the SBC; '' = none
    tech_prefix VARCHAR(16) NOT NULL DEFAULT '',
    description VARCHAR(255) NULL,
    active TINYINT(1) NOT NULL DEFAULT 1,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_customer_ips (ip_addr, prefix_len, tech_prefix),
    KEY ix_customer_ips_customer (customer_id),
    CONSTRAINT fk_customer_ips_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE,
    CONSTRAINT ck_customer_ips_prefix_len CHECK (prefix_len <= 128)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS carriers (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(128) NOT NULL,
    host VARCHAR(255) NOT NULL,
    port SMALLINT UNSIGNED NOT NULL DEFAULT 5060,
    transport ENUM('udp', 'tcp', 'tls') NOT NULL DEFAULT 'udp',
    -- dispatcher priority: the SBC tries higher priorities first, then fails over
    priority INT NOT NULL DEFAULT 0,
    weight INT UNSIGNED NOT NULL DEFAULT 1,
    enabled TINYINT(1) NOT NULL DEFAULT 1,
    -- health from SIP OPTIONS probing: up, probing (failing probes) or down
    state ENUM('up', 'down', 'probing') NOT NULL DEFAULT 'probing',
    state_changed_at DATETIME(3) NULL,
    last_probe_at DATETIME(3) NULL,
    last_probe_code SMALLINT UNSIGNED NULL,
    max_channels INT UNSIGNED NULL,
    max_cps INT UNSIGNED NULL,
    -- number manipulation towards the carrier
    strip_digits TINYINT UNSIGNED NOT NULL DEFAULT 0,
    tech_prefix VARCHAR(16) NOT NULL DEFAULT '',
    from_domain VARCHAR(255) NULL,
    auth_username VARCHAR(64) NULL,
    auth_password VARCHAR(128) NULL,
    currency CHAR(3) NOT NULL DEFAULT 'USD',
    -- today's counters (UTC day in daily_stats_date); yesterday's move to carrier_daily_stats
    daily_stats_date DATE NULL,
    daily_calls INT UNSIGNED NOT NULL DEFAULT 0,
    daily_answered INT UNSIGNED NOT NULL DEFAULT 0,
    daily_failed INT UNSIGNED NOT NULL DEFAULT 0,
    daily_minutes DECIMAL(14, 4) NOT NULL DEFAULT 0,
    notes TEXT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_carriers_name (name),
    UNIQUE KEY uq_carriers_target (host, port, transport),
    KEY ix_carriers_state (enabled, state, priority)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Buy rates. A lookup asks for every prefix of the number at once
-- (prefix IN ('5', '57', '573', ...)) and keeps the longest, so the index
-- leads with carrier and prefix. effective_to NULL = open-ended.
-- Billing: the first billing_initial seconds, then billing_increment steps (60/60, 1/1, 30/6...).
CREATE TABLE IF NOT EXISTS carrier_rates (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    carrier_id BIGINT UNSIGNED NOT NULL,
    prefix VARCHAR(32) NOT NULL,
    destination VARCHAR(128) NULL,
    rate_per_minute DECIMAL(12, 6) NOT NULL,
    connection_fee DECIMAL(12, 6) NOT NULL DEFAULT 0,
    billing_initial SMALLINT UNSIGNED NOT NULL DEFAULT 60,
    billing_increment SMALLINT UNSIGNED NOT NULL DEFAULT 60,
    effective_from DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    effective_to DATETIME NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_carrier_rates (carrier_id, prefix, effective_from),
    KEY ix_carrier_rates_prefix (prefix, effective_from),
    CONSTRAINT fk_carrier_rates_carrier FOREIGN KEY (carrier_id) REFERENCES carriers (id) ON DELETE CASCADE,
    CONSTRAINT ck_carrier_rates_increment CHECK (billing_increment > 0),
    CONSTRAINT ck_carrier_rates_period CHECK (effective_to IS NULL OR effective_to > effective_from)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Sell rates per customer, same shape as carrier_rates.
CREATE TABLE IF NOT EXISTS customer_rates (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id BIGINT UNSIGNED NOT NULL,
    prefix VARCHAR(32) NOT NULL,
    destination VARCHAR(128) NULL,
    rate_per_minute DECIMAL(12, 6) NOT NULL,
    connection_fee DECIMAL(12, 6) NOT NULL DEFAULT 0,
    billing_initial SMALLINT UNSIGNED NOT NULL DEFAULT 60,
    billing_increment SMALLINT UNSIGNED NOT NULL DEFAULT 60,
    effective_from DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    effective_to DATETIME NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_customer_rates (customer_id, prefix, effective_from),
    KEY ix_customer_rates_prefix (prefix, effective_from),
    CONSTRAINT fk_customer_rates_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE,
    CONSTRAINT ck_customer_rates_increment CHECK (billing_increment > 0),
    CONSTRAINT ck_customer_rates_period CHECK (effective_to IS NULL OR effective_to > effective_from)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Per-customer number normalisation, applied in priority order (lowest first)
-- before the dialing plan and routing. 'prefix': strip strip_digits then put
-- prepend in front; 'regex': replace pattern with replacement (\1 groups).
CREATE TABLE IF NOT EXISTS normalization_rules (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id BIGINT UNSIGNED NOT NULL,
    applies_to ENUM('callee', 'caller') NOT NULL DEFAULT 'callee',
    match_type ENUM('prefix', 'regex') NOT NULL DEFAULT 'prefix',
    pattern VARCHAR(128) NOT NULL,
    strip_digits TINYINT UNSIGNED NOT NULL DEFAULT 0,
    prepend VARCHAR(32) NOT NULL DEFAULT '',
    replacement VARCHAR(128) NULL,
    priority INT NOT NULL DEFAULT 0,
    -- stop after this rule matched, or keep applying later rules
    final TINYINT(1) NOT NULL DEFAULT 1,
    active TINYINT(1) NOT NULL DEFAULT 1,
    description VARCHAR(255) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY ix_normalization_rules_customer (customer_id, applies_to, active, priority),
    CONSTRAINT fk_normalization_rules_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per call through the SBC, written at the end of the dialog. No
-- foreign keys: CDRs outlive customers and carriers, and the hot insert path
-- must not wait on parent rows. Timestamps are UTC with milliseconds.
CREATE TABLE IF NOT EXISTS sbc_cdrs (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    customer_id BIGINT UNSIGNED NULL,
    -- carrier that carried (or last refused) the call
    carrier_id BIGINT UNSIGNED NULL,
    -- every carrier tried, in order: [{"carrier_id": 2, "code": 503, "ms": 120}, ...]
    carriers_tried LONGTEXT NULL CHECK (carriers_tried IS NULL OR JSON_VALID(carriers_tried)),
    attempts TINYINT UNSIGNED NOT NULL DEFAULT 0,
    source_ip VARCHAR(45) NOT NULL,
    source_port SMALLINT UNSIGNED NULL,
    caller VARCHAR(64) NULL,
    callee_original VARCHAR(64) NOT NULL,
    callee_normalized VARCHAR(64) NULL,
    tech_prefix VARCHAR(16) NOT NULL DEFAULT '',
    user_agent VARCHAR(255) NULL,
    sip_code SMALLINT UNSIGNED NOT NULL,
    sip_reason VARCHAR(128) NULL,
    disposition ENUM('answered', 'busy', 'no_answer', 'cancelled', 'failed', 'rejected') NOT NULL,
    hangup_side ENUM('caller', 'callee', 'sbc') NULL,
    -- why the SBC itself refused: cps_exceeded, channels_exceeded, minutes_exhausted, blacklisted,
    -- dialing_plan, no_route, unknown_source ...
    reject_reason VARCHAR(64) NULL,
    invite_at DATETIME(3) NOT NULL,
    progress_at DATETIME(3) NULL,
    answer_at DATETIME(3) NULL,
    end_at DATETIME(3) NULL,
    -- INVITE -> first 180/183
    pdd_ms INT UNSIGNED NULL,
    -- 180/183 -> 200 OK
    ring_ms INT UNSIGNED NULL,
    -- 200 OK -> BYE
    billable_ms BIGINT UNSIGNED NOT NULL DEFAULT 0,
    -- INVITE -> end
    total_ms BIGINT UNSIGNED NOT NULL DEFAULT 0,
    -- billable time rounded by the rates' increments
    billed_seconds_cost INT UNSIGNED NULL,
    billed_seconds_price INT UNSIGNED NULL,
    cost DECIMAL(14, 6) NULL,
    price DECIMAL(14, 6) NULL,
    currency CHAR(3) NULL,
    carrier_rate_prefix VARCHAR(32) NULL,
    customer_rate_prefix VARCHAR(32) NULL,
    -- QoS when the media path reports it
    mos DECIMAL(3, 2) NULL,
    jitter_ms DECIMAL(8, 2) NULL,
    packet_loss_pct DECIMAL(5, 2) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY ix_sbc_cdrs_invite (invite_at),
    KEY ix_sbc_cdrs_customer (customer_id, invite_at),
    KEY ix_sbc_cdrs_carrier (carrier_id, invite_at),
    KEY ix_sbc_cdrs_call_id (call_id(64)),
    KEY ix_sbc_cdrs_callee (callee_normalized, invite_at),
    KEY ix_sbc_cdrs_source (source_ip, invite_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- SIP messages for the ladder diagram; kept for days, not forever (cleanup timer).
CREATE TABLE IF NOT EXISTS sip_traces (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    captured_at DATETIME(6) NOT NULL,
    direction ENUM('in', 'out') NOT NULL,
    src_ip VARCHAR(45) NOT NULL,
    src_port SMALLINT UNSIGNED NOT NULL,
    dst_ip VARCHAR(45) NOT NULL,
    dst_port SMALLINT UNSIGNED NOT NULL,
    transport ENUM('udp', 'tcp', 'tls', 'ws', 'wss') NOT NULL DEFAULT 'udp',
    -- request method, or NULL for a reply
    method VARCHAR(32) NULL,
    status_code SMALLINT UNSIGNED NULL,
    cseq VARCHAR(64) NULL,
    message MEDIUMTEXT NOT NULL,
    KEY ix_sip_traces_call (call_id(64), captured_at),
    KEY ix_sip_traces_captured (captured_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Addresses refused before any other check. expires_at NULL = permanent.
CREATE TABLE IF NOT EXISTS ip_blacklist (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    ip_addr VARCHAR(45) NOT NULL,
    prefix_len TINYINT UNSIGNED NOT NULL DEFAULT 32,
    reason VARCHAR(255) NOT NULL DEFAULT '',
    -- manual (panel/API), flood (SBC pike), fail2ban (jail sync), fraud
    source ENUM('manual', 'flood', 'fail2ban', 'fraud') NOT NULL DEFAULT 'manual',
    jail VARCHAR(64) NULL,
    hits INT UNSIGNED NOT NULL DEFAULT 0,
    created_by BIGINT UNSIGNED NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    expires_at DATETIME(3) NULL,
    UNIQUE KEY uq_ip_blacklist (ip_addr, prefix_len),
    KEY ix_ip_blacklist_expires (expires_at),
    CONSTRAINT fk_ip_blacklist_user FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Per carrier and UTC day, for reports and the carrier page; filled from the
-- carriers' daily counters at the day change.
CREATE TABLE IF NOT EXISTS carrier_daily_stats (
    carrier_id BIGINT UNSIGNED NOT NULL,
    stat_date DATE NOT NULL,
    calls INT UNSIGNED NOT NULL DEFAULT 0,
    answered INT UNSIGNED NOT NULL DEFAULT 0,
    failed INT UNSIGNED NOT NULL DEFAULT 0,
    billable_ms BIGINT UNSIGNED NOT NULL DEFAULT 0,
    pdd_ms_sum BIGINT UNSIGNED NOT NULL DEFAULT 0,
    pdd_count INT UNSIGNED NOT NULL DEFAULT 0,
    cost DECIMAL(16, 6) NOT NULL DEFAULT 0,
    PRIMARY KEY (carrier_id, stat_date),
    KEY ix_carrier_daily_stats_date (stat_date),
    CONSTRAINT fk_carrier_daily_stats_carrier FOREIGN KEY (carrier_id) REFERENCES carriers (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Portal users and alert events point at customers and carriers created above.
ALTER TABLE users
    ADD CONSTRAINT fk_users_customer FOREIGN KEY IF NOT EXISTS (customer_id) REFERENCES customers (id)
        ON DELETE CASCADE;

ALTER TABLE events
    ADD CONSTRAINT fk_events_customer FOREIGN KEY IF NOT EXISTS (customer_id) REFERENCES customers (id)
        ON DELETE SET NULL,
    ADD CONSTRAINT fk_events_carrier FOREIGN KEY IF NOT EXISTS (carrier_id) REFERENCES carriers (id)
        ON DELETE SET NULL;
