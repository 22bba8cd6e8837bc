-- Collections (outbound reminder calls to customers with overdue payments).
--
-- The dialer reads debtors from the view collections_debtors_v. Out of the box
-- the view reads collections_debtors (filled by an import or the panel); an ISP
-- whose billing system lives in the same MariaDB points the view at its own
-- tables with CREATE OR REPLACE VIEW, keeping the column names and types.

CREATE TABLE IF NOT EXISTS collections_debtors (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- the ISP's own customer/contract reference
    external_id VARCHAR(64) NOT NULL,
    full_name VARCHAR(128) NOT NULL,
    phone VARCHAR(32) NOT NULL,
    amount_due DECIMAL(12, 2) NOT NULL,
    currency CHAR(3) NOT NULL DEFAULT 'COP',
    due_date DATE NOT NULL,
    -- prompts language (sounds directory), e.g. es
    language VARCHAR(8) NOT NULL DEFAULT 'es',
    active TINYINT(1) NOT NULL DEFAULT 1,
    -- already paid / do not call
    do_not_call TINYINT(1) NOT NULL DEFAULT 0,
    notes VARCHAR(255) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_collections_debtors_external (external_id),
    KEY ix_collections_debtors_due (active, due_date)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The contract the dialer relies on: one row per debtor that may be called.
CREATE OR REPLACE VIEW collections_debtors_v AS
SELECT
    d.external_id AS external_id,
    d.full_name AS full_name,
    d.phone AS phone,
    d.amount_due AS amount_due,
    d.currency AS currency,
    d.due_date AS due_date,
    DATEDIFF(UTC_DATE(), d.due_date) AS days_overdue,
    d.language AS language
FROM collections_debtors d
WHERE d.active = 1 AND d.do_not_call = 0 AND d.amount_due > 0;

CREATE TABLE IF NOT EXISTS collections_campaigns (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(128) NOT NULL,
    status ENUM('draft', 'scheduled', 'running', 'paused', 'finished', 'cancelled') NOT NULL DEFAULT 'draft',
    -- where debtors come from (a view or table with the collections_debtors_v columns)
    source_view VARCHAR(64) NOT NULL DEFAULT 'collections_debtors_v',
    min_days_overdue INT NOT NULL DEFAULT 1,
    min_amount DECIMAL(12, 2) NOT NULL DEFAULT 0,
    -- the personalised message; placeholders {name}, {amount}, {due_date} are spoken
    message_template TEXT NULL,
    -- calling window, local time of timezone
    calling_hours_start TIME NOT NULL DEFAULT '08:00:00',
    calling_hours_end TIME NOT NULL DEFAULT '19:00:00',
    calling_days SET('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun') NOT NULL DEFAULT 'mon,tue,wed,thu,fri,sat',
    timezone VARCHAR(64) NOT NULL DEFAULT 'America/Bogota',
    max_concurrent_calls INT UNSIGNED NOT NULL DEFAULT 2,
    max_attempts TINYINT UNSIGNED NOT NULL DEFAULT 3,
    retry_interval_minutes INT UNSIGNED NOT NULL DEFAULT 60,
    ring_timeout_seconds SMALLINT UNSIGNED NOT NULL DEFAULT 30,
    caller_id VARCHAR(32) NULL,
    -- the Asterisk endpoint calls go out through (PJSIP/<number>@<endpoint>)
    endpoint VARCHAR(64) NOT NULL DEFAULT 'provider',
    -- where a debtor who presses the "talk to an agent" key is sent
    transfer_extension VARCHAR(32) NULL,
    created_by BIGINT UNSIGNED NULL,
    started_at DATETIME(3) NULL,
    finished_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_collections_campaigns_name (name),
    KEY ix_collections_campaigns_status (status),
    CONSTRAINT fk_collections_campaigns_user FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE SET NULL,
    CONSTRAINT ck_collections_campaigns_hours CHECK (calling_hours_end > calling_hours_start),
    CONSTRAINT ck_collections_campaigns_attempts CHECK (max_attempts >= 1)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per debtor in a campaign, snapshotted when the campaign picks them,
-- so what was said on the call stays known even if the billing data changes.
CREATE TABLE IF NOT EXISTS collections_calls (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id BIGINT UNSIGNED NOT NULL,
    external_id VARCHAR(64) NOT NULL,
    full_name VARCHAR(128) NOT NULL,
    phone VARCHAR(32) NOT NULL,
    amount_due DECIMAL(12, 2) NOT NULL,
    currency CHAR(3) NOT NULL,
    due_date DATE NOT NULL,
    language VARCHAR(8) NOT NULL DEFAULT 'es',
    -- pending: waiting for its (next) attempt; dialing/in_call: an attempt is live;
    -- done: a final outcome was reached; exhausted: max_attempts without one; skipped: excluded
    status ENUM('pending', 'dialing', 'in_call', 'done', 'exhausted', 'skipped') NOT NULL DEFAULT 'pending',
    attempts TINYINT UNSIGNED NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(3) NULL,
    last_outcome VARCHAR(32) NULL,
    -- what the debtor answered, when they did
    promised_payment_date DATE NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_collections_calls (campaign_id, external_id, phone),
    KEY ix_collections_calls_due (campaign_id, status, next_attempt_at),
    CONSTRAINT fk_collections_calls_campaign FOREIGN KEY (campaign_id) REFERENCES collections_campaigns (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every dial attempt and how it ended.
CREATE TABLE IF NOT EXISTS collections_attempts (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    collections_call_id BIGINT UNSIGNED NOT NULL,
    campaign_id BIGINT UNSIGNED NOT NULL,
    attempt_no TINYINT UNSIGNED NOT NULL,
    -- Asterisk channel id (ARI) and uniqueid/linkedid to join with Asterisk CDRs
    channel_id VARCHAR(128) NULL,
    linkedid VARCHAR(150) NULL,
    started_at DATETIME(3) NOT NULL,
    answered_at DATETIME(3) NULL,
    ended_at DATETIME(3) NULL,
    -- no_answer, busy, congestion, failed, rejected, answered_hangup (hung up before the menu),
    -- listened (heard the message, no key), promise_to_pay, already_paid, transfer, callback, error
    outcome VARCHAR(32) NULL,
    final TINYINT(1) NOT NULL DEFAULT 0,
    dtmf VARCHAR(32) NULL,
    hangup_cause SMALLINT UNSIGNED NULL,
    hangup_cause_text VARCHAR(64) NULL,
    duration_ms INT UNSIGNED NULL,
    error VARCHAR(500) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_collections_attempts (collections_call_id, attempt_no),
    KEY ix_collections_attempts_campaign (campaign_id, started_at),
    KEY ix_collections_attempts_channel (channel_id),
    CONSTRAINT fk_collections_attempts_call FOREIGN KEY (collections_call_id) REFERENCES collections_calls (id)
        ON DELETE CASCADE,
    CONSTRAINT fk_collections_attempts_campaign FOREIGN KEY (campaign_id) REFERENCES collections_campaigns (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
