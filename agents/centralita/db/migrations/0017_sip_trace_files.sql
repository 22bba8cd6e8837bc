-- SIP traces reach sip_traces through spool files: Kamailio writes each traced
-- message as a line, and the SBC's trace loader loads each closed file with
-- LOAD DATA and then deletes it. A file's rows and its row here are committed
-- together, so a loader that stops between the commit and the deletion sees
-- the file was loaded and only deletes it: no trace is stored twice. The
-- loader deletes rows older than two days (a file is deleted seconds after).
--
-- origin: the SBC host (several may share the database); file: the spool
-- file's name; bytes: its size when loaded; row_count: the rows it gave;
-- refused: its lines set aside in the host's quarantine instead.

CREATE TABLE IF NOT EXISTS sip_trace_files (
    origin VARCHAR(64) NOT NULL,
    file VARCHAR(128) NOT NULL,
    bytes BIGINT UNSIGNED NOT NULL,
    row_count INT UNSIGNED NOT NULL,
    refused INT UNSIGNED NOT NULL DEFAULT 0,
    loaded_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (origin, file),
    KEY ix_sip_trace_files_loaded (loaded_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
