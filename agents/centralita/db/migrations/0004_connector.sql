-- The PBX side's call records: one row per Asterisk CDR (every field of the
-- cdr_manager Cdr event plus LinkedID and Sequence), written by the connector's
-- MariaDB sink so PBX calls appear in the panel beside the SBC's CDRs, and the
-- recordings the connector uploaded, linked to their CDR by UniqueID.
-- Times are UTC (each session sets time_zone = '+00:00'); the connector converts
-- Asterisk's local times with CDR_TIMEZONE before writing.

CREATE TABLE IF NOT EXISTS asterisk_cdrs (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    accountcode VARCHAR(80) NOT NULL DEFAULT '',
    src VARCHAR(80) NOT NULL DEFAULT '',
    dst VARCHAR(80) NOT NULL DEFAULT '',
    dcontext VARCHAR(80) NOT NULL DEFAULT '',
    -- "Name" <number>, UTF-8 (caller names arrive with accents and non-Latin scripts)
    clid VARCHAR(255) NOT NULL DEFAULT '',
    channel VARCHAR(255) NOT NULL DEFAULT '',
    dstchannel VARCHAR(255) NOT NULL DEFAULT '',
    lastapp VARCHAR(80) NOT NULL DEFAULT '',
    lastdata VARCHAR(1024) NOT NULL DEFAULT '',
    start_time DATETIME(6) NULL,
    -- NULL when the call was not answered
    answer_time DATETIME(6) NULL,
    end_time DATETIME(6) NULL,
    duration INT UNSIGNED NOT NULL DEFAULT 0,
    billsec INT UNSIGNED NOT NULL DEFAULT 0,
    disposition VARCHAR(32) NOT NULL DEFAULT '',
    amaflags VARCHAR(32) NOT NULL DEFAULT '',
    uniqueid VARCHAR(150) NOT NULL,
    userfield VARCHAR(255) NOT NULL DEFAULT '',
    linkedid VARCHAR(150) NOT NULL,
    -- negative when cdr_manager.conf lacks the Sequence mapping (a content hash stands in)
    sequence BIGINT NOT NULL,
    -- the PBX host that produced the record (several pbx hosts share one database)
    host VARCHAR(255) NOT NULL DEFAULT '',
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    -- a CDR is named by UniqueID + Sequence: a re-sent batch is ignored, never doubled
    UNIQUE KEY uq_asterisk_cdrs_uniqueid_sequence (uniqueid, sequence),
    KEY ix_asterisk_cdrs_linkedid (linkedid, sequence),
    KEY ix_asterisk_cdrs_start (start_time),
    KEY ix_asterisk_cdrs_src (src),
    KEY ix_asterisk_cdrs_dst (dst),
    KEY ix_asterisk_cdrs_accountcode (accountcode, start_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Recordings the connector found and uploaded. A row exists once the file is
-- stable; uploaded_at is set when the API confirmed it (only then may the file
-- be deleted, when RECORDING_DELETE_AFTER_UPLOAD is on).
CREATE TABLE IF NOT EXISTS asterisk_recordings (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- the UniqueID found in the file name; joins to asterisk_cdrs.uniqueid
    uniqueid VARCHAR(150) NULL,
    linkedid VARCHAR(150) NULL,
    path VARCHAR(1024) NOT NULL,
    path_sha256 CHAR(64) NOT NULL,
    size_bytes BIGINT UNSIGNED NOT NULL,
    duration_seconds DECIMAL(10, 2) NULL,
    status ENUM('uploaded', 'failed', 'skipped') NOT NULL,
    error VARCHAR(1024) NULL,
    attempts INT UNSIGNED NOT NULL DEFAULT 0,
    uploaded_at DATETIME(3) NULL,
    deleted_at DATETIME(3) NULL,
    host VARCHAR(255) NOT NULL DEFAULT '',
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_asterisk_recordings_path (host, path_sha256),
    KEY ix_asterisk_recordings_uniqueid (uniqueid),
    KEY ix_asterisk_recordings_linkedid (linkedid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
