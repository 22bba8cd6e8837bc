-- What Kamailio needs on top of the SBC tables of 0002: views shaped like the
-- tables of Kamailio's own modules (dispatcher, permissions), views that answer
-- the per-call questions in one indexed lookup, the SIP trace intake, and the
-- triggers that turn a raw CDR (timestamps, codes) into a billed one and keep
-- customer minutes, carrier counters and the alert events right.
--
-- Kamailio only ever INSERTs a CDR with what it saw on the wire; durations,
-- cost, price, minutes and daily stats are computed here, in one place, so a
-- CDR written by any path (answered, failed, rejected) is billed the same way.

-- Customers may be routed through carriers that cost more than their sell rate
-- only when this is set (a loss leader, a test route).
ALTER TABLE customers
    ADD COLUMN IF NOT EXISTS lcr_allow_loss TINYINT(1) NOT NULL DEFAULT 0 AFTER dialing_plan_id;

-- Dispatcher (modparam table): one set per carrier, set id = carrier id, so the
-- LCR order picked per call can address each carrier and its probing state.
CREATE OR REPLACE VIEW kam_dispatcher AS
SELECT
    c.id AS id,
    c.id AS setid,
    CONCAT('sip:', c.host, ':', c.port, IF(c.transport = 'udp', '', CONCAT(';transport=', c.transport))) AS destination,
    0 AS flags,
    c.priority AS priority,
    CONCAT('duid=carrier', c.id, ';cid=', c.id, ';sd=', c.strip_digits, ';tp=', c.tech_prefix) AS attrs,
    c.name AS description
FROM carriers c
WHERE c.enabled = 1;

-- Permissions (modparam address_table): group 1 = customer sources (tag = the
-- customer id), group 2 = blacklisted sources still in force.
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
WHERE b.expires_at IS NULL OR b.expires_at > UTC_TIMESTAMP(3);

-- Who is calling: a customer source with its limits. IPv4 sources match by
-- subnet (net and mask as integers); IPv6 sources match the exact address.
-- minutes_left_s is NULL without a cap; minutes of an earlier month count as 0
-- (the counter itself is reset by the CDR trigger on the month's first call).
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
        AS minutes_left_s
FROM customer_ips ci
JOIN customers c ON c.id = ci.customer_id
WHERE ci.active = 1 AND c.active = 1;

-- SIP traces as Kamailio's siptrace module writes them (its sip_trace layout):
-- an intake only. The trigger files each message into sip_traces, the table
-- the panel draws ladder diagrams from; Kamailio's retention timer empties
-- this intake of rows older than a few minutes.
CREATE TABLE IF NOT EXISTS kam_sip_trace (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    time_stamp DATETIME NOT NULL DEFAULT '2000-01-01 00:00:01',
    time_us INT UNSIGNED NOT NULL DEFAULT 0,
    callid VARCHAR(255) NOT NULL DEFAULT '',
    traced_user VARCHAR(255) NOT NULL DEFAULT '',
    msg MEDIUMTEXT NOT NULL,
    method VARCHAR(50) NOT NULL DEFAULT '',
    status VARCHAR(255) NOT NULL DEFAULT '',
    fromip VARCHAR(64) NOT NULL DEFAULT '',
    toip VARCHAR(64) NOT NULL DEFAULT '',
    fromtag VARCHAR(128) NOT NULL DEFAULT '',
    totag VARCHAR(128) NOT NULL DEFAULT '',
    direction VARCHAR(4) NOT NULL DEFAULT '',
    KEY ix_kam_sip_trace_time (time_stamp)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

DELIMITER //

-- "udp:10.0.0.1:5060" / "udp:[2001:db8::1]:5060" -> parts. siptrace writes its
-- time in the server's local zone (Kamailio and MariaDB share the host's zone):
-- the session's offset to UTC turns it back into UTC.
CREATE OR REPLACE TRIGGER kam_sip_trace_file AFTER INSERT ON kam_sip_trace FOR EACH ROW
BEGIN
    DECLARE src_proto, dst_proto VARCHAR(8);
    DECLARE src_port, dst_port VARCHAR(8);
    SET src_proto = LOWER(SUBSTRING_INDEX(NEW.fromip, ':', 1));
    SET dst_proto = LOWER(SUBSTRING_INDEX(NEW.toip, ':', 1));
    SET src_port = SUBSTRING_INDEX(NEW.fromip, ':', -1);
    SET dst_port = SUBSTRING_INDEX(NEW.toip, ':', -1);
    INSERT INTO sip_traces (call_id, captured_at, direction, src_ip, src_port, dst_ip, dst_port, transport,
                            method, status_code, cseq, message)
    VALUES (
        NEW.callid,
        NEW.time_stamp + INTERVAL NEW.time_us MICROSECOND + INTERVAL TIMESTAMPDIFF(SECOND, NOW(), UTC_TIMESTAMP()) SECOND,
        IF(NEW.direction = 'out', 'out', 'in'),
        TRIM(BOTH '[]' FROM SUBSTRING(NEW.fromip, CHAR_LENGTH(src_proto) + 2,
                                      CHAR_LENGTH(NEW.fromip) - CHAR_LENGTH(src_proto) - CHAR_LENGTH(src_port) - 2)),
        CAST(src_port AS UNSIGNED),
        TRIM(BOTH '[]' FROM SUBSTRING(NEW.toip, CHAR_LENGTH(dst_proto) + 2,
                                      CHAR_LENGTH(NEW.toip) - CHAR_LENGTH(dst_proto) - CHAR_LENGTH(dst_port) - 2)),
        CAST(dst_port AS UNSIGNED),
        IF(src_proto IN ('udp', 'tcp', 'tls', 'ws', 'wss'), src_proto, 'udp'),
        IF(NEW.status REGEXP '^[1-6][0-9][0-9]', NULL, NULLIF(NEW.method, '')),
        IF(NEW.status REGEXP '^[1-6][0-9][0-9]', CAST(LEFT(NEW.status, 3) AS UNSIGNED), NULL),
        NULLIF(REGEXP_SUBSTR(NEW.msg, '(?im)^(CSeq|c\\.seq):[ \\t]*\\K[^\\r\\n]+'), ''),
        NEW.msg
    );
END//

-- A raw CDR -> durations, disposition, cost and price. Rates are looked up by
-- every prefix of the normalised number at once (indexed), longest wins, as
-- in effect at the INVITE.
--
-- Every read in these triggers is a locking read: CDRs of one customer are
-- written concurrently, and with InnoDB's snapshot isolation (the default on
-- MariaDB 11.8) a plain read would open a snapshot that makes the later
-- UPDATE of the customer's row fail ("Record has changed since last read")
-- and the CDR would be lost.
CREATE OR REPLACE TRIGGER sbc_cdrs_bill BEFORE INSERT ON sbc_cdrs FOR EACH ROW
BEGIN
    DECLARE n VARCHAR(64);
    DECLARE secs BIGINT;
    DECLARE r_rate, r_fee DECIMAL(12, 6);
    DECLARE r_init, r_inc INT;
    DECLARE r_prefix VARCHAR(32);
    DECLARE cur CHAR(3);

    SET n = COALESCE(NEW.callee_normalized, NEW.callee_original);
    -- 180 and 200 are handled by different Kamailio processes: a 180 seen a
    -- hair after the 200 of the same call counts as arriving with it
    IF NEW.progress_at IS NOT NULL AND NEW.answer_at IS NOT NULL AND NEW.progress_at > NEW.answer_at THEN
        SET NEW.progress_at = NEW.answer_at;
    END IF;
    IF NEW.progress_at < NEW.invite_at THEN
        SET NEW.progress_at = NULL;
    END IF;
    IF NEW.answer_at < NEW.invite_at THEN
        SET NEW.answer_at = NULL;
    END IF;
    IF NEW.progress_at IS NOT NULL AND NEW.progress_at >= NEW.invite_at THEN
        SET NEW.pdd_ms = TIMESTAMPDIFF(MICROSECOND, NEW.invite_at, NEW.progress_at) DIV 1000;
    END IF;
    IF NEW.answer_at IS NOT NULL THEN
        SET NEW.ring_ms = TIMESTAMPDIFF(MICROSECOND, COALESCE(NEW.progress_at, NEW.answer_at), NEW.answer_at) DIV 1000;
        IF NEW.pdd_ms IS NULL THEN
            -- answered without a 180/183: the 200 OK is the first sign of life
            SET NEW.pdd_ms = TIMESTAMPDIFF(MICROSECOND, NEW.invite_at, NEW.answer_at) DIV 1000;
        END IF;
        IF NEW.end_at IS NOT NULL AND NEW.end_at > NEW.answer_at THEN
            SET NEW.billable_ms = TIMESTAMPDIFF(MICROSECOND, NEW.answer_at, NEW.end_at) DIV 1000;
        END IF;
    END IF;
    IF NEW.end_at IS NOT NULL AND NEW.end_at >= NEW.invite_at THEN
        SET NEW.total_ms = TIMESTAMPDIFF(MICROSECOND, NEW.invite_at, NEW.end_at) DIV 1000;
    END IF;

    SET NEW.disposition = CASE
        WHEN NEW.reject_reason IS NOT NULL THEN 'rejected'
        WHEN NEW.sip_code BETWEEN 200 AND 299 THEN 'answered'
        WHEN NEW.sip_code IN (486, 600) THEN 'busy'
        WHEN NEW.sip_code IN (408, 480) THEN 'no_answer'
        WHEN NEW.sip_code = 487 THEN 'cancelled'
        ELSE 'failed'
    END;

    IF NEW.answer_at IS NOT NULL AND NEW.billable_ms > 0 THEN
        SET secs = CEIL(NEW.billable_ms / 1000);
        IF NEW.carrier_id IS NOT NULL THEN
            SET r_rate = NULL;
            SELECT rate_per_minute, connection_fee, billing_initial, billing_increment, prefix
              INTO r_rate, r_fee, r_init, r_inc, r_prefix
              FROM carrier_rates
             WHERE carrier_id = NEW.carrier_id
               AND prefix IN (LEFT(n, 1), LEFT(n, 2), LEFT(n, 3), LEFT(n, 4), LEFT(n, 5), LEFT(n, 6), LEFT(n, 7),
                              LEFT(n, 8), LEFT(n, 9), LEFT(n, 10), LEFT(n, 11), LEFT(n, 12), LEFT(n, 13),
                              LEFT(n, 14), LEFT(n, 15), LEFT(n, 16))
               AND effective_from <= NEW.invite_at AND (effective_to IS NULL OR effective_to > NEW.invite_at)
             ORDER BY CHAR_LENGTH(prefix) DESC, effective_from DESC
             LIMIT 1
             LOCK IN SHARE MODE;
            IF r_rate IS NOT NULL THEN
                SET NEW.billed_seconds_cost = IF(secs <= r_init, r_init, r_init + CEIL((secs - r_init) / r_inc) * r_inc);
                SET NEW.cost = ROUND(NEW.billed_seconds_cost / 60 * r_rate + r_fee, 6);
                SET NEW.carrier_rate_prefix = r_prefix;
            END IF;
        END IF;
        IF NEW.customer_id IS NOT NULL THEN
            SET r_rate = NULL;
            SELECT rate_per_minute, connection_fee, billing_initial, billing_increment, prefix
              INTO r_rate, r_fee, r_init, r_inc, r_prefix
              FROM customer_rates
             WHERE customer_id = NEW.customer_id
               AND prefix IN (LEFT(n, 1), LEFT(n, 2), LEFT(n, 3), LEFT(n, 4), LEFT(n, 5), LEFT(n, 6), LEFT(n, 7),
                              LEFT(n, 8), LEFT(n, 9), LEFT(n, 10), LEFT(n, 11), LEFT(n, 12), LEFT(n, 13),
                              LEFT(n, 14), LEFT(n, 15), LEFT(n, 16))
               AND effective_from <= NEW.invite_at AND (effective_to IS NULL OR effective_to > NEW.invite_at)
             ORDER BY CHAR_LENGTH(prefix) DESC, effective_from DESC
             LIMIT 1
             LOCK IN SHARE MODE;
            IF r_rate IS NOT NULL THEN
                SET NEW.billed_seconds_price = IF(secs <= r_init, r_init, r_init + CEIL((secs - r_init) / r_inc) * r_inc);
                SET NEW.price = ROUND(NEW.billed_seconds_price / 60 * r_rate + r_fee, 6);
                SET NEW.customer_rate_prefix = r_prefix;
                SELECT currency INTO cur FROM customers WHERE id = NEW.customer_id FOR UPDATE;
                SET NEW.currency = cur;
            END IF;
        END IF;
    END IF;
END//

-- After a CDR: the customer's monthly minutes (and their alerts) and the
-- carriers' counters, for every carrier tried (a failover counts as a failed
-- call of the carrier that refused).
CREATE OR REPLACE TRIGGER sbc_cdrs_account AFTER INSERT ON sbc_cdrs FOR EACH ROW
BEGIN
    DECLARE lim INT UNSIGNED;
    DECLARE used DECIMAL(14, 4);
    DECLARE pct TINYINT UNSIGNED;
    DECLARE warned, exhausted DATETIME(3);
    DECLARE month_start DATE DEFAULT DATE_FORMAT(UTC_DATE(), '%Y-%m-01');
    DECLARE minutes DECIMAL(14, 4);

    IF NEW.customer_id IS NOT NULL THEN
        -- a new month starts from zero and may warn again
        UPDATE customers
           SET minutes_used = 0, minutes_period_start = month_start,
               minutes_warning_sent_at = NULL, minutes_exhausted_sent_at = NULL
         WHERE id = NEW.customer_id AND (minutes_period_start IS NULL OR minutes_period_start < month_start);
        IF NEW.billable_ms > 0 THEN
            SET minutes = COALESCE(NEW.billed_seconds_price, NEW.billable_ms / 1000) / 60;
            UPDATE customers SET minutes_used = minutes_used + minutes WHERE id = NEW.customer_id;
        END IF;
        SELECT monthly_minutes_limit, minutes_used, minutes_warning_pct, minutes_warning_sent_at,
               minutes_exhausted_sent_at
          INTO lim, used, pct, warned, exhausted
          FROM customers WHERE id = NEW.customer_id
           FOR UPDATE;
        IF lim IS NOT NULL THEN
            IF used >= lim AND exhausted IS NULL THEN
                INSERT INTO events (created_at, type, severity, source, customer_id, message, payload)
                VALUES (UTC_TIMESTAMP(3), 'minutes_exhausted', 'critical', 'kamailio', NEW.customer_id,
                        CONCAT('monthly minutes exhausted: ', ROUND(used, 2), ' of ', lim),
                        JSON_OBJECT('minutes_used', used, 'minutes_limit', lim));
                UPDATE customers SET minutes_exhausted_sent_at = UTC_TIMESTAMP(3),
                       minutes_warning_sent_at = COALESCE(minutes_warning_sent_at, UTC_TIMESTAMP(3))
                 WHERE id = NEW.customer_id;
            ELSEIF used >= lim * pct / 100 AND warned IS NULL THEN
                INSERT INTO events (created_at, type, severity, source, customer_id, message, payload)
                VALUES (UTC_TIMESTAMP(3), 'minutes_warning', 'warning', 'kamailio', NEW.customer_id,
                        CONCAT('monthly minutes at ', FLOOR(used * 100 / lim), '%: ', ROUND(used, 2), ' of ', lim),
                        JSON_OBJECT('minutes_used', used, 'minutes_limit', lim, 'warning_pct', pct));
                UPDATE customers SET minutes_warning_sent_at = UTC_TIMESTAMP(3) WHERE id = NEW.customer_id;
            END IF;
        END IF;
    END IF;

    IF NEW.carriers_tried IS NOT NULL THEN
        UPDATE carriers c
          JOIN JSON_TABLE(NEW.carriers_tried, '$[*]' COLUMNS (
                   carrier_id BIGINT UNSIGNED PATH '$.carrier_id',
                   code INT PATH '$.code')) AS t ON t.carrier_id = c.id
           SET c.daily_calls = IF(c.daily_stats_date = UTC_DATE(), c.daily_calls, 0) + 1,
               c.daily_answered = IF(c.daily_stats_date = UTC_DATE(), c.daily_answered, 0) + (t.code BETWEEN 200 AND 299),
               c.daily_failed = IF(c.daily_stats_date = UTC_DATE(), c.daily_failed, 0)
                   + (t.code >= 300 AND t.code NOT IN (404, 484, 486, 487, 600, 603)),
               c.daily_minutes = IF(c.daily_stats_date = UTC_DATE(), c.daily_minutes, 0)
                   + IF(t.code BETWEEN 200 AND 299, NEW.billable_ms / 60000, 0),
               c.daily_stats_date = UTC_DATE();

        INSERT INTO carrier_daily_stats (carrier_id, stat_date, calls, answered, failed, billable_ms, pdd_ms_sum,
                                         pdd_count, cost)
        SELECT t.carrier_id, DATE(NEW.invite_at), 1,
               t.code BETWEEN 200 AND 299,
               t.code >= 300 AND t.code NOT IN (404, 484, 486, 487, 600, 603),
               IF(t.code BETWEEN 200 AND 299, NEW.billable_ms, 0),
               IF(t.code BETWEEN 200 AND 299 AND NEW.pdd_ms IS NOT NULL, NEW.pdd_ms, 0),
               IF(t.code BETWEEN 200 AND 299 AND NEW.pdd_ms IS NOT NULL, 1, 0),
               IF(t.code BETWEEN 200 AND 299, COALESCE(NEW.cost, 0), 0)
          FROM JSON_TABLE(NEW.carriers_tried, '$[*]' COLUMNS (
                   carrier_id BIGINT UNSIGNED PATH '$.carrier_id',
                   code INT PATH '$.code')) AS t
          JOIN carriers c ON c.id = t.carrier_id
        ON DUPLICATE KEY UPDATE
            calls = calls + VALUES(calls), answered = answered + VALUES(answered), failed = failed + VALUES(failed),
            billable_ms = billable_ms + VALUES(billable_ms), pdd_ms_sum = pdd_ms_sum + VALUES(pdd_ms_sum),
            pdd_count = pdd_count + VALUES(pdd_count), cost = cost + VALUES(cost);

    END IF;
END//

DELIMITER ;
