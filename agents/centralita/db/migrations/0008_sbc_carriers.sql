-- SBC carriers, part 2: what the carriers table always had and Kamailio now
-- uses. Per-carrier limits (max_channels counted from the INVITE on, ringing
-- calls included; max_cps of INVITEs sent), digest credentials answered once
-- when a carrier challenges, the From host it wants (from_domain), and
-- caller-number rules (normalization_rules.applies_to = 'caller').

-- The CDR keeps the caller as received (caller) and as sent to the carrier
-- (caller_normalized; NULL when the call was refused before its customer was
-- known). carriers_tried lists only carriers that were sent the INVITE, so
-- the carrier counters stay exact; carriers passed over because they were at
-- a limit are listed apart: [{"carrier_id": 3, "reason": "max_channels"}, ...].
ALTER TABLE sbc_cdrs
    ADD COLUMN IF NOT EXISTS caller_normalized VARCHAR(64) NULL AFTER caller,
    ADD COLUMN IF NOT EXISTS carriers_skipped LONGTEXT NULL
        CHECK (carriers_skipped IS NULL OR JSON_VALID(carriers_skipped)) AFTER carriers_tried;

-- from_domain goes into the From header as it is: a host name or address,
-- optionally with a port, nothing else.
ALTER TABLE carriers
    ADD CONSTRAINT IF NOT EXISTS ck_carriers_from_domain
        CHECK (from_domain IS NULL OR from_domain REGEXP '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$');

-- Dispatcher (modparam table), as in 0006 plus the carrier's limits and From
-- host in the attributes: mc = max channels, cps = max INVITEs a second (absent:
-- unlimited), fd = from_domain (absent: keep the caller's host), au = 1 when
-- the carrier has credentials. Kamailio refuses an attribute with an empty
-- value, so a value that is not set leaves its attribute out (tp too). The credentials themselves are not here: the
-- attributes are shown by `dispatcher.list`, so Kamailio reads the password
-- from the carriers table only when a carrier challenges.
CREATE OR REPLACE VIEW kam_dispatcher AS
SELECT
    c.id AS id,
    c.id AS setid,
    CONCAT('sip:', c.host, ':', c.port, IF(c.transport = 'udp', '', CONCAT(';transport=', c.transport))) AS destination,
    0 AS flags,
    c.priority AS priority,
    CONCAT('duid=carrier', c.id, ';cid=', c.id, ';sd=', c.strip_digits,
           ';au=', IF(IFNULL(c.auth_username, '') <> '' AND c.auth_password IS NOT NULL, 1, 0),
           IF(c.max_channels IS NULL, '', CONCAT(';mc=', c.max_channels)),
           IF(c.max_cps IS NULL, '', CONCAT(';cps=', c.max_cps)),
           IF(IFNULL(c.from_domain, '') = '', '', CONCAT(';fd=', c.from_domain)),
           IF(c.tech_prefix = '', '', CONCAT(';tp=', c.tech_prefix))) AS attrs,
    c.name AS description
FROM carriers c
WHERE c.enabled = 1;

-- Who is calling, as in 0007 plus caller_rules: whether the customer has
-- active caller-number rules (without any, Kamailio sends the From user as
-- received and never asks the database about it).
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
        AS seconds_left,
    EXISTS (SELECT 1 FROM normalization_rules nr
             WHERE nr.customer_id = ci.customer_id AND nr.applies_to = 'caller' AND nr.active = 1)
        AS caller_rules
FROM customer_ips ci
JOIN customers c ON c.id = ci.customer_id
WHERE ci.active = 1 AND c.active = 1;
