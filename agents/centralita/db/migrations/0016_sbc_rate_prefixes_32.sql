-- Rate prefixes of 17-32 digits are billed. Migration 0014 accepts prefixes of
-- 1-32 digits, but filing looked a number's rate up by its first 16 prefixes
-- only (the trigger's IN list, the procedure's seq_1_to_16 join and its
-- "CHAR_LENGTH(prefix) <= 16" check of a carried rate), so a call to a number
-- routed by a longer prefix was filed with no cost and no price. Both now
-- look at up to 32 prefixes; a number of n digits still costs n lookups, so
-- numbers of 16 digits or fewer are filed as before.
--
-- The trigger is 0009's and the procedure 0015's, restated with only those
-- bounds changed.

DELIMITER //

CREATE OR REPLACE TRIGGER sbc_cdrs_bill BEFORE INSERT ON sbc_cdrs FOR EACH ROW
bill: BEGIN
    DECLARE n VARCHAR(64);
    DECLARE secs BIGINT;
    DECLARE r_rate, r_fee DECIMAL(12, 6);
    DECLARE r_init, r_inc INT;
    DECLARE r_prefix VARCHAR(32);
    DECLARE cur CHAR(3);

    IF @sbc_cdr_filing THEN
        LEAVE bill;
    END IF;
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
                              LEFT(n, 14), LEFT(n, 15), LEFT(n, 16), LEFT(n, 17), LEFT(n, 18), LEFT(n, 19),
                              LEFT(n, 20), LEFT(n, 21), LEFT(n, 22), LEFT(n, 23), LEFT(n, 24), LEFT(n, 25),
                              LEFT(n, 26), LEFT(n, 27), LEFT(n, 28), LEFT(n, 29), LEFT(n, 30), LEFT(n, 31),
                              LEFT(n, 32))
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
                              LEFT(n, 14), LEFT(n, 15), LEFT(n, 16), LEFT(n, 17), LEFT(n, 18), LEFT(n, 19),
                              LEFT(n, 20), LEFT(n, 21), LEFT(n, 22), LEFT(n, 23), LEFT(n, 24), LEFT(n, 25),
                              LEFT(n, 26), LEFT(n, 27), LEFT(n, 28), LEFT(n, 29), LEFT(n, 30), LEFT(n, 31),
                              LEFT(n, 32))
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

CREATE OR REPLACE PROCEDURE sbc_file_cdrs()
    MODIFIES SQL DATA
    COMMENT 'Files the CDRs in sbc_cdr_intake into sbc_cdrs, billed and accounted'
filing: BEGIN
    DECLARE v_now DATETIME(3);
    DECLARE v_today DATE;
    DECLARE v_month DATE;
    DECLARE v_last BIGINT UNSIGNED;
    DECLARE v_locked INT UNSIGNED;
    DECLARE v_errno INT;
    DECLARE v_error VARCHAR(512);
    DECLARE v_bad INT UNSIGNED DEFAULT 0;

    -- why the last call in this session filed its batch one row at a time (NULL: it did not)
    SET @sbc_file_cdrs_row_by_row = NULL;
    IF GET_LOCK('centralita.sbc_file_cdrs', 10) IS NOT TRUE THEN
        SIGNAL SQLSTATE 'HY000' SET MESSAGE_TEXT = 'sbc_file_cdrs: another filing has held its lock for 10 s';
    END IF;
    SELECT MAX(id) INTO v_last
      FROM (SELECT id FROM sbc_cdr_intake WHERE filing_error IS NULL ORDER BY id LIMIT 5000) batch;
    IF v_last IS NULL THEN
        DO RELEASE_LOCK('centralita.sbc_file_cdrs');
        LEAVE filing;
    END IF;
    -- the times the triggers take from their INSERT statement, taken once
    SET v_now = UTC_TIMESTAMP(3);
    SET v_today = DATE(v_now);
    SET v_month = DATE_FORMAT(v_today, '%Y-%m-01');

    -- Scratch tables of this session, emptied before each use: each filed
    -- row's computed columns, and each (row, carrier tried) of a carrier that
    -- exists. InnoDB, not MEMORY: strict mode refuses a bad value in any row of
    -- a transactional table, where a MEMORY table would take a clipped value
    -- from the second row on and file it.
    CREATE TEMPORARY TABLE IF NOT EXISTS sbc_cdr_filing (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        customer_id BIGINT UNSIGNED NULL,
        invite_at DATETIME(3) NULL,
        progress_at DATETIME(3) NULL,
        answer_at DATETIME(3) NULL,
        pdd_ms INT UNSIGNED NULL,
        ring_ms INT UNSIGNED NULL,
        billable_ms BIGINT UNSIGNED NULL,
        total_ms BIGINT UNSIGNED NULL,
        disposition ENUM('answered', 'busy', 'no_answer', 'cancelled', 'failed', 'rejected') NULL,
        billed_seconds_cost INT UNSIGNED NULL,
        billed_seconds_price INT UNSIGNED NULL,
        cost DECIMAL(14, 6) NULL,
        price DECIMAL(14, 6) NULL,
        currency CHAR(3) NULL,
        carrier_rate_prefix VARCHAR(32) NULL,
        customer_rate_prefix VARCHAR(32) NULL,
        -- what the row adds to its customer's minutes (the trigger's `minutes`)
        minutes DECIMAL(14, 4) NOT NULL DEFAULT 0
    ) ENGINE=InnoDB;
    CREATE TEMPORARY TABLE IF NOT EXISTS sbc_cdr_filing_tried (
        id BIGINT UNSIGNED NOT NULL,
        carrier_id BIGINT UNSIGNED NOT NULL,
        code INT NOT NULL,
        -- a carrier tried twice in one CDR is left to the triggers
        PRIMARY KEY (id, carrier_id)
    ) ENGINE=InnoDB;
    -- each row of a customer with a monthly cap: its customer's running total
    -- of minutes at that row, and the customer's lines
    CREATE TEMPORARY TABLE IF NOT EXISTS sbc_cdr_filing_used (
        id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
        customer_id BIGINT UNSIGNED NOT NULL,
        lim INT UNSIGNED NOT NULL,
        pct TINYINT UNSIGNED NULL,
        exhausted_open TINYINT NOT NULL,
        warning_open TINYINT NOT NULL,
        used DECIMAL(14, 4) NOT NULL,
        KEY (customer_id)
    ) ENGINE=InnoDB;
    -- Emptied by TRUNCATE, not DELETE: InnoDB never purges the rows deleted
    -- from a temporary table, so after DELETEs every later read of the table
    -- walks every row it ever held in this session (Kamailio's writer keeps
    -- its session for days). TRUNCATE commits, so it runs before the
    -- transaction.
    TRUNCATE TABLE sbc_cdr_filing;
    TRUNCATE TABLE sbc_cdr_filing_tried;
    TRUNCATE TABLE sbc_cdr_filing_used;

    set_based: BEGIN
        DECLARE EXIT HANDLER FOR SQLEXCEPTION
        BEGIN
            GET DIAGNOSTICS CONDITION 1 v_errno = MYSQL_ERRNO, v_error = MESSAGE_TEXT;
            ROLLBACK;
            SET @sbc_cdr_filing = NULL;
        END;

        SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
        START TRANSACTION;

        -- 1. Each row as sbc_cdrs_bill computes it. p and a are the progress
        -- and answer times after the trigger's corrections. Each rate is the
        -- one the row carries (by primary key) when that one is still the
        -- owner's and in effect at the INVITE; otherwise one join over every
        -- prefix of the number (k = 1..32, as the trigger's IN list) finds it,
        -- longest prefix first, then the latest effective_from. The joins are
        -- written in the order they must run (row, each prefix, its rate by
        -- index): left to the optimizer, a rate deck is read whole for every
        -- row.
        INSERT INTO sbc_cdr_filing (id, customer_id, invite_at, progress_at, answer_at, pdd_ms, ring_ms, billable_ms,
                                    total_ms, disposition, billed_seconds_cost, billed_seconds_price, cost, price,
                                    currency, carrier_rate_prefix, customer_rate_prefix, minutes)
        SELECT b.id, b.customer_id, b.invite_at, b.p, b.a, b.pdd_ms, b.ring_ms, b.billable_ms, b.total_ms,
               b.disposition, b.bsc, b.bsp,
               IF(b.bsc IS NULL, NULL, ROUND(b.bsc / 60 * b.c_rate + b.c_fee, 6)),
               IF(b.bsp IS NULL, NULL, ROUND(b.bsp / 60 * b.s_rate + b.s_fee, 6)),
               IF(b.bsp IS NULL, NULL, b.currency),
               b.c_prefix, IF(b.bsp IS NULL, NULL, b.s_prefix),
               IF(b.billable_ms > 0, COALESCE(b.bsp, b.billable_ms / 1000) / 60, 0)
          FROM (
            SELECT r.*,
                   IF(cr.rate_per_minute IS NULL, NULL,
                      IF(r.secs <= cr.billing_initial, cr.billing_initial,
                         cr.billing_initial + CEIL((r.secs - cr.billing_initial) / cr.billing_increment)
                             * cr.billing_increment)) AS bsc,
                   cr.rate_per_minute AS c_rate, cr.connection_fee AS c_fee, cr.prefix AS c_prefix,
                   IF(sr.rate_per_minute IS NULL, NULL,
                      IF(r.secs <= sr.billing_initial, sr.billing_initial,
                         sr.billing_initial + CEIL((r.secs - sr.billing_initial) / sr.billing_increment)
                             * sr.billing_increment)) AS bsp,
                   sr.rate_per_minute AS s_rate, sr.connection_fee AS s_fee, sr.prefix AS s_prefix,
                   cu.currency
              FROM (
                SELECT t.*,
                       CASE WHEN t.p IS NOT NULL AND t.p >= t.invite_at
                                THEN TIMESTAMPDIFF(MICROSECOND, t.invite_at, t.p) DIV 1000
                            WHEN t.a IS NOT NULL THEN TIMESTAMPDIFF(MICROSECOND, t.invite_at, t.a) DIV 1000
                       END AS pdd_ms,
                       IF(t.a IS NULL, NULL, TIMESTAMPDIFF(MICROSECOND, COALESCE(t.p, t.a), t.a) DIV 1000) AS ring_ms,
                       IF(t.a IS NOT NULL AND t.end_at > t.a, TIMESTAMPDIFF(MICROSECOND, t.a, t.end_at) DIV 1000, 0)
                           AS billable_ms,
                       IF(t.end_at >= t.invite_at, TIMESTAMPDIFF(MICROSECOND, t.invite_at, t.end_at) DIV 1000, 0)
                           AS total_ms,
                       CASE
                           WHEN t.reject_reason IS NOT NULL THEN 'rejected'
                           WHEN t.sip_code BETWEEN 200 AND 299 THEN 'answered'
                           WHEN t.sip_code IN (486, 600) THEN 'busy'
                           WHEN t.sip_code IN (408, 480) THEN 'no_answer'
                           WHEN t.sip_code = 487 THEN 'cancelled'
                           ELSE 'failed'
                       END AS disposition,
                       IF(t.a IS NOT NULL AND t.end_at > t.a,
                          CAST(CEIL((TIMESTAMPDIFF(MICROSECOND, t.a, t.end_at) DIV 1000) / 1000) AS SIGNED), NULL)
                           AS secs
                  FROM (
                    SELECT i.id, i.customer_id, i.carrier_id, i.carrier_rate_id, i.customer_rate_id, i.invite_at,
                           i.end_at, i.sip_code, i.reject_reason,
                           COALESCE(i.callee_normalized, i.callee_original) AS n,
                           IF(IF(i.progress_at > i.answer_at, i.answer_at, i.progress_at) < i.invite_at, NULL,
                              IF(i.progress_at > i.answer_at, i.answer_at, i.progress_at)) AS p,
                           IF(i.answer_at < i.invite_at, NULL, i.answer_at) AS a
                      FROM sbc_cdr_intake i
                     WHERE i.id <= v_last AND i.filing_error IS NULL
                  ) t
              ) r
              LEFT JOIN (
                -- the carried rate (by primary key) or, failing that, the longest prefix
                SELECT q.id, d.rate_per_minute, d.connection_fee, d.billing_initial, d.billing_increment, d.prefix,
                       1 AS rn
                  FROM sbc_cdr_intake q
                  JOIN carrier_rates d
                    ON d.id = q.carrier_rate_id AND d.carrier_id = q.carrier_id
                   AND d.effective_from <= q.invite_at AND (d.effective_to IS NULL OR d.effective_to > q.invite_at)
                   AND CHAR_LENGTH(d.prefix) <= 32
                   AND d.prefix = LEFT(COALESCE(q.callee_normalized, q.callee_original), GREATEST(CHAR_LENGTH(d.prefix), 1))
                 WHERE q.id <= v_last AND q.filing_error IS NULL
                   AND q.answer_at >= q.invite_at AND q.end_at > q.answer_at
                UNION ALL
                SELECT q.id, x.rate_per_minute, x.connection_fee, x.billing_initial, x.billing_increment, x.prefix,
                       ROW_NUMBER() OVER (PARTITION BY q.id
                                          ORDER BY CHAR_LENGTH(x.prefix) DESC, x.effective_from DESC) AS rn
                  FROM sbc_cdr_intake q
                  LEFT JOIN carrier_rates v
                    ON v.id = q.carrier_rate_id AND v.carrier_id = q.carrier_id
                   AND v.effective_from <= q.invite_at AND (v.effective_to IS NULL OR v.effective_to > q.invite_at)
                   AND CHAR_LENGTH(v.prefix) <= 32
                   AND v.prefix = LEFT(COALESCE(q.callee_normalized, q.callee_original), GREATEST(CHAR_LENGTH(v.prefix), 1))
                  STRAIGHT_JOIN seq_1_to_32 k
                    ON v.id IS NULL
                   AND k.seq <= GREATEST(CHAR_LENGTH(COALESCE(q.callee_normalized, q.callee_original)), 1)
                  STRAIGHT_JOIN carrier_rates x
                    ON x.carrier_id = q.carrier_id
                   AND x.prefix = LEFT(COALESCE(q.callee_normalized, q.callee_original), k.seq)
                   AND x.effective_from <= q.invite_at AND (x.effective_to IS NULL OR x.effective_to > q.invite_at)
                 WHERE q.id <= v_last AND q.filing_error IS NULL
                   AND q.answer_at >= q.invite_at AND q.end_at > q.answer_at
              ) cr ON cr.id = r.id AND cr.rn = 1 AND r.secs > 0
              LEFT JOIN (
                SELECT q.id, d.rate_per_minute, d.connection_fee, d.billing_initial, d.billing_increment, d.prefix,
                       1 AS rn
                  FROM sbc_cdr_intake q
                  JOIN customer_rates d
                    ON d.id = q.customer_rate_id AND d.customer_id = q.customer_id
                   AND d.effective_from <= q.invite_at AND (d.effective_to IS NULL OR d.effective_to > q.invite_at)
                   AND CHAR_LENGTH(d.prefix) <= 32
                   AND d.prefix = LEFT(COALESCE(q.callee_normalized, q.callee_original), GREATEST(CHAR_LENGTH(d.prefix), 1))
                 WHERE q.id <= v_last AND q.filing_error IS NULL
                   AND q.answer_at >= q.invite_at AND q.end_at > q.answer_at
                UNION ALL
                SELECT q.id, x.rate_per_minute, x.connection_fee, x.billing_initial, x.billing_increment, x.prefix,
                       ROW_NUMBER() OVER (PARTITION BY q.id
                                          ORDER BY CHAR_LENGTH(x.prefix) DESC, x.effective_from DESC) AS rn
                  FROM sbc_cdr_intake q
                  LEFT JOIN customer_rates v
                    ON v.id = q.customer_rate_id AND v.customer_id = q.customer_id
                   AND v.effective_from <= q.invite_at AND (v.effective_to IS NULL OR v.effective_to > q.invite_at)
                   AND CHAR_LENGTH(v.prefix) <= 32
                   AND v.prefix = LEFT(COALESCE(q.callee_normalized, q.callee_original), GREATEST(CHAR_LENGTH(v.prefix), 1))
                  STRAIGHT_JOIN seq_1_to_32 k
                    ON v.id IS NULL
                   AND k.seq <= GREATEST(CHAR_LENGTH(COALESCE(q.callee_normalized, q.callee_original)), 1)
                  STRAIGHT_JOIN customer_rates x
                    ON x.customer_id = q.customer_id
                   AND x.prefix = LEFT(COALESCE(q.callee_normalized, q.callee_original), k.seq)
                   AND x.effective_from <= q.invite_at AND (x.effective_to IS NULL OR x.effective_to > q.invite_at)
                 WHERE q.id <= v_last AND q.filing_error IS NULL
                   AND q.answer_at >= q.invite_at AND q.end_at > q.answer_at
              ) sr ON sr.id = r.id AND sr.rn = 1 AND r.secs > 0
              LEFT JOIN customers cu ON cu.id = r.customer_id
          ) b;

        -- 2. Into sbc_cdrs in intake order, past the triggers.
        SET @sbc_cdr_filing = 1;
        INSERT INTO sbc_cdrs (call_id, customer_id, carrier_id, carriers_tried, attempts, source_ip, source_port,
                              caller, caller_normalized, callee_original, callee_normalized, tech_prefix, user_agent,
                              sip_code, sip_reason, disposition, hangup_side, reject_reason, invite_at, progress_at,
                              answer_at, end_at, pdd_ms, ring_ms, billable_ms, total_ms, billed_seconds_cost,
                              billed_seconds_price, cost, price, currency, carrier_rate_prefix, customer_rate_prefix,
                              carriers_skipped, created_at)
        SELECT i.call_id, i.customer_id, i.carrier_id, i.carriers_tried, i.attempts, i.source_ip, i.source_port,
               i.caller, i.caller_normalized, i.callee_original, i.callee_normalized, i.tech_prefix, i.user_agent,
               i.sip_code, i.sip_reason, f.disposition, i.hangup_side, i.reject_reason, i.invite_at, f.progress_at,
               f.answer_at, i.end_at, f.pdd_ms, f.ring_ms, f.billable_ms, f.total_ms, f.billed_seconds_cost,
               f.billed_seconds_price, f.cost, f.price, f.currency, f.carrier_rate_prefix, f.customer_rate_prefix,
               i.carriers_skipped, i.created_at
          FROM sbc_cdr_intake i
          JOIN sbc_cdr_filing f ON f.id = i.id
         ORDER BY i.id;
        SET @sbc_cdr_filing = NULL;

        -- 3. Customers: locked, moved to this month, then their minutes. An
        -- alert goes out at the CDR whose running total first reaches its line
        -- (ie: the limit, iw: the warning share), once per period; a CDR that
        -- reaches both at once raises only minutes_exhausted, as the trigger.
        -- Only customers with a monthly cap can reach a line: the running
        -- totals are summed for them alone, and each one's first row past a
        -- line is found by grouping (a MIN() OVER the whole partition
        -- rescans the partition for every row of it).
        SELECT COUNT(*) INTO v_locked
          FROM customers
         WHERE id IN (SELECT customer_id FROM sbc_cdr_filing)
           FOR UPDATE;
        UPDATE customers
           SET minutes_used = 0, minutes_period_start = v_month,
               minutes_warning_sent_at = NULL, minutes_exhausted_sent_at = NULL
         WHERE id IN (SELECT customer_id FROM sbc_cdr_filing)
           AND (minutes_period_start IS NULL OR minutes_period_start < v_month);

        INSERT INTO sbc_cdr_filing_used (id, customer_id, lim, pct, exhausted_open, warning_open, used)
        SELECT f.id, f.customer_id, c.monthly_minutes_limit, c.minutes_warning_pct,
               c.minutes_exhausted_sent_at IS NULL, c.minutes_warning_sent_at IS NULL,
               CAST(c.minutes_used + SUM(f.minutes) OVER (PARTITION BY f.customer_id ORDER BY f.id)
                    AS DECIMAL(14, 4))
          FROM sbc_cdr_filing f
          JOIN customers c ON c.id = f.customer_id
         WHERE c.monthly_minutes_limit IS NOT NULL
           AND (c.minutes_exhausted_sent_at IS NULL OR c.minutes_warning_sent_at IS NULL);

        INSERT INTO events (created_at, type, severity, source, customer_id, message, payload)
        SELECT v_now,
               IF(u.id = x.ie, 'minutes_exhausted', 'minutes_warning'),
               IF(u.id = x.ie, 'critical', 'warning'),
               'kamailio', u.customer_id,
               IF(u.id = x.ie, CONCAT('monthly minutes exhausted: ', ROUND(u.used, 2), ' of ', u.lim),
                  CONCAT('monthly minutes at ', FLOOR(u.used * 100 / u.lim), '%: ', ROUND(u.used, 2), ' of ', u.lim)),
               -- the trigger's local variables reach JSON_OBJECT as strings: "8.4000", "10", "80"
               IF(u.id = x.ie,
                  JSON_OBJECT('minutes_used', CAST(u.used AS CHAR), 'minutes_limit', CAST(u.lim AS CHAR)),
                  JSON_OBJECT('minutes_used', CAST(u.used AS CHAR), 'minutes_limit', CAST(u.lim AS CHAR),
                              'warning_pct', CAST(u.pct AS CHAR)))
          FROM sbc_cdr_filing_used u
          JOIN (
            SELECT customer_id,
                   MIN(IF(exhausted_open AND used >= lim, id, NULL)) AS ie,
                   MIN(IF(warning_open AND used >= lim * pct / 100, id, NULL)) AS iw
              FROM sbc_cdr_filing_used
             GROUP BY customer_id
          ) x ON x.customer_id = u.customer_id
         WHERE u.id = x.ie OR (u.id = x.iw AND (x.ie IS NULL OR x.iw < x.ie))
         ORDER BY u.id;

        UPDATE customers c
          JOIN (
            SELECT t.customer_id, t.total, x.ie IS NOT NULL AS exhausted,
                   x.iw IS NOT NULL AND (x.ie IS NULL OR x.iw < x.ie) AS warned
              FROM (SELECT customer_id, SUM(minutes) AS total FROM sbc_cdr_filing GROUP BY customer_id) t
              LEFT JOIN (
                SELECT customer_id,
                       MIN(IF(exhausted_open AND used >= lim, id, NULL)) AS ie,
                       MIN(IF(warning_open AND used >= lim * pct / 100, id, NULL)) AS iw
                  FROM sbc_cdr_filing_used
                 GROUP BY customer_id
              ) x ON x.customer_id = t.customer_id
          ) s ON s.customer_id = c.id
           SET c.minutes_used = c.minutes_used + s.total,
               c.minutes_exhausted_sent_at = IF(s.exhausted, v_now, c.minutes_exhausted_sent_at),
               c.minutes_warning_sent_at = IF(s.exhausted OR s.warned, COALESCE(c.minutes_warning_sent_at, v_now),
                                              c.minutes_warning_sent_at);

        -- 4. Carriers: every carrier tried (that exists), summed per carrier
        -- for today's counters and per carrier and INVITE day for the stats.
        INSERT INTO sbc_cdr_filing_tried (id, carrier_id, code)
        SELECT i.id, t.carrier_id, t.code
          FROM sbc_cdr_intake i
          CROSS JOIN JSON_TABLE(i.carriers_tried, '$[*]' COLUMNS (
                   carrier_id BIGINT UNSIGNED PATH '$.carrier_id',
                   code INT PATH '$.code')) AS t
          JOIN carriers c ON c.id = t.carrier_id
         WHERE i.id <= v_last AND i.filing_error IS NULL AND i.carriers_tried IS NOT NULL;

        UPDATE carriers c
          JOIN (
            SELECT t.carrier_id, COUNT(*) AS calls,
                   SUM(t.code BETWEEN 200 AND 299) AS answered,
                   SUM(t.code >= 300 AND t.code NOT IN (404, 484, 486, 487, 600, 603)) AS failed,
                   SUM(IF(t.code BETWEEN 200 AND 299, f.billable_ms / 60000, 0)) AS minutes
              FROM sbc_cdr_filing_tried t
              JOIN sbc_cdr_filing f ON f.id = t.id
             GROUP BY t.carrier_id
          ) s ON s.carrier_id = c.id
           SET c.daily_calls = IF(c.daily_stats_date = v_today, c.daily_calls, 0) + s.calls,
               c.daily_answered = IF(c.daily_stats_date = v_today, c.daily_answered, 0) + s.answered,
               c.daily_failed = IF(c.daily_stats_date = v_today, c.daily_failed, 0) + s.failed,
               c.daily_minutes = IF(c.daily_stats_date = v_today, c.daily_minutes, 0) + s.minutes,
               c.daily_stats_date = v_today;

        INSERT INTO carrier_daily_stats (carrier_id, stat_date, calls, answered, failed, billable_ms, pdd_ms_sum,
                                         pdd_count, cost)
        SELECT t.carrier_id, DATE(f.invite_at), COUNT(*),
               SUM(t.code BETWEEN 200 AND 299),
               SUM(t.code >= 300 AND t.code NOT IN (404, 484, 486, 487, 600, 603)),
               SUM(IF(t.code BETWEEN 200 AND 299, f.billable_ms, 0)),
               SUM(IF(t.code BETWEEN 200 AND 299 AND f.pdd_ms IS NOT NULL, f.pdd_ms, 0)),
               SUM(IF(t.code BETWEEN 200 AND 299 AND f.pdd_ms IS NOT NULL, 1, 0)),
               SUM(IF(t.code BETWEEN 200 AND 299, COALESCE(f.cost, 0), 0))
          FROM sbc_cdr_filing_tried t
          JOIN sbc_cdr_filing f ON f.id = t.id
         GROUP BY t.carrier_id, DATE(f.invite_at)
        ON DUPLICATE KEY UPDATE
            calls = calls + VALUES(calls), answered = answered + VALUES(answered), failed = failed + VALUES(failed),
            billable_ms = billable_ms + VALUES(billable_ms), pdd_ms_sum = pdd_ms_sum + VALUES(pdd_ms_sum),
            pdd_count = pdd_count + VALUES(pdd_count), cost = cost + VALUES(cost);

        DELETE i FROM sbc_cdr_intake i JOIN sbc_cdr_filing f ON f.id = i.id;
        COMMIT;
    END set_based;

    IF v_errno IS NOT NULL AND v_errno NOT IN (1205, 1213) THEN
        -- One row at a time through the triggers; a row sbc_cdrs refuses stays
        -- in the intake with the reason.
        SET @sbc_file_cdrs_row_by_row = LEFT(CONCAT(v_errno, ': ', v_error), 512);
        SET v_error = NULL;
        SET v_errno = NULL;
        SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
        START TRANSACTION;
        pending: FOR r IN (SELECT id FROM sbc_cdr_intake WHERE id <= v_last AND filing_error IS NULL ORDER BY id) DO
            one_row: BEGIN
                DECLARE v_row_errno INT;
                DECLARE v_row_error VARCHAR(512);
                DECLARE EXIT HANDLER FOR SQLEXCEPTION
                BEGIN
                    GET DIAGNOSTICS CONDITION 1 v_row_errno = MYSQL_ERRNO, v_row_error = MESSAGE_TEXT;
                    IF v_row_errno IN (1205, 1213) THEN
                        SET v_errno = v_row_errno, v_error = v_row_error;
                    ELSE
                        UPDATE sbc_cdr_intake
                           SET filing_error = LEFT(CONCAT(v_row_errno, ': ', v_row_error), 512),
                               filing_failed_at = v_now
                         WHERE id = r.id;
                        SET v_bad = v_bad + 1;
                    END IF;
                END;
                IF v_errno IS NOT NULL THEN
                    LEAVE one_row;
                END IF;
                INSERT INTO sbc_cdrs (call_id, customer_id, carrier_id, carriers_tried, attempts, source_ip,
                                      source_port, caller, caller_normalized, callee_original, callee_normalized,
                                      tech_prefix, user_agent, sip_code, sip_reason, disposition, hangup_side,
                                      reject_reason, invite_at, progress_at, answer_at, end_at, carriers_skipped,
                                      created_at)
                SELECT call_id, customer_id, carrier_id, carriers_tried, attempts, source_ip, source_port, caller,
                       caller_normalized, callee_original, callee_normalized, tech_prefix, user_agent, sip_code,
                       sip_reason, disposition, hangup_side, reject_reason, invite_at, progress_at, answer_at,
                       end_at, carriers_skipped, created_at
                  FROM sbc_cdr_intake
                 WHERE id = r.id;
                DELETE FROM sbc_cdr_intake WHERE id = r.id;
            END one_row;
        END FOR pending;
        IF v_errno IS NULL THEN
            IF v_bad > 0 THEN
                INSERT INTO events (created_at, type, severity, source, message, payload)
                SELECT v_now, 'cdr_filing_failed', 'critical', 'kamailio',
                       LEFT(CONCAT(v_bad, ' CDR(s) could not be filed and wait in sbc_cdr_intake (filing_error): ',
                                   MIN(filing_error)), 500),
                       JSON_OBJECT('intake_ids', JSON_ARRAYAGG(id ORDER BY id), 'call_ids', JSON_ARRAYAGG(call_id ORDER BY id),
                                   'error', MIN(filing_error))
                  FROM sbc_cdr_intake
                 WHERE filing_failed_at = v_now AND id <= v_last;
            END IF;
            COMMIT;
        ELSE
            ROLLBACK;
        END IF;
    END IF;

    DO RELEASE_LOCK('centralita.sbc_file_cdrs');
    IF v_errno IS NOT NULL THEN
        -- a deadlock or lock wait timeout: nothing was filed, the rows wait
        SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = v_errno, MESSAGE_TEXT = v_error;
    END IF;
END//

DELIMITER ;
