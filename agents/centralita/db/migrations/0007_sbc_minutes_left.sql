-- The minutes a capped customer has left, to the millisecond: the SBC cuts a
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
