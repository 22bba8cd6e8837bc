-- A CDR is filed once, even when Kamailio's writer sends its batch twice.
--
-- Kamailio's database driver gives up on a statement MariaDB has not answered
-- within its timeout, and the writer sends it again later. When MariaDB did
-- complete the first one (it was only slow, say behind a large DELETE), the
-- batch arrives twice. A CDR is one call attempt: its Call-ID and INVITE time
-- (to the millisecond) name it.
--
-- * A copy of a CDR still in the intake is refused by this unique key; the
--   writer's INSERT ends with ON DUPLICATE KEY UPDATE, so the copy is dropped
--   and the rest of its batch goes in.
-- * A copy of a CDR already filed into sbc_cdrs is kept in the intake,
--   marked by the trigger below with the id it copies. The filing skips it
--   (as it skips every row with a filing_error), so it is neither billed nor
--   counted twice, and nothing the writer sent is lost.

ALTER TABLE sbc_cdr_intake
    ADD UNIQUE KEY IF NOT EXISTS uq_sbc_cdr_intake_call (call_id, invite_at);

DELIMITER //

CREATE OR REPLACE TRIGGER sbc_cdr_intake_copy BEFORE INSERT ON sbc_cdr_intake FOR EACH ROW
BEGIN
    DECLARE v_filed BIGINT UNSIGNED;
    IF NEW.call_id IS NOT NULL AND NEW.invite_at IS NOT NULL AND NEW.filing_error IS NULL THEN
        SET v_filed = (SELECT id FROM sbc_cdrs
                        WHERE call_id = NEW.call_id AND invite_at = NEW.invite_at
                        ORDER BY id LIMIT 1);
        IF v_filed IS NOT NULL THEN
            SET NEW.filing_error = CONCAT('a copy of sbc_cdrs ', v_filed, ', already filed: not filed again'),
                NEW.filing_failed_at = UTC_TIMESTAMP(3);
        END IF;
    END IF;
END//

DELIMITER ;
