-- AI inbound calls: one row per call answered by the assistant, with what was
-- said on both sides, every tool call, per-turn first-audio latency and the
-- model's token usage. Written by the aicall agent when a call ends (kept in an
-- on-disk spool and written later if MariaDB is away). Times are UTC.

CREATE TABLE IF NOT EXISTS aicall_calls (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- Asterisk's UniqueID of the caller's channel (joins asterisk_cdrs.uniqueid)
    call_uid VARCHAR(150) NOT NULL,
    channel VARCHAR(255) NOT NULL DEFAULT '',
    caller VARCHAR(80) NOT NULL DEFAULT '',
    did VARCHAR(80) NOT NULL DEFAULT '',
    started_at DATETIME(3) NOT NULL,
    answered_at DATETIME(3) NULL,
    ended_at DATETIME(3) NULL,
    -- caller_hangup, assistant_hangup, transferred, model_unavailable[_transferred],
    -- model_lost[_transferred], asterisk_lost, max_duration, rejected_busy, error
    end_reason VARCHAR(40) NOT NULL DEFAULT '',
    transferred_to VARCHAR(80) NULL,
    -- MixMonitor's file for the call (MIXMONITOR_FILENAME), NULL when not recorded
    recording_path VARCHAR(1024) NULL,
    -- rtp (externalMedia over RTP/UDP) or websocket (chan_websocket)
    media VARCHAR(16) NOT NULL DEFAULT '',
    model VARCHAR(80) NOT NULL DEFAULT '',
    reconnects SMALLINT UNSIGNED NOT NULL DEFAULT 0,
    input_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    output_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    total_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    -- median and worst first-audio latency over the call's turns, NULL without turns
    latency_p50_ms INT UNSIGNED NULL,
    latency_max_ms INT UNSIGNED NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    -- a record replayed from the spool after a partial write is not doubled
    UNIQUE KEY uq_aicall_calls_uid (call_uid),
    KEY ix_aicall_calls_started (started_at),
    KEY ix_aicall_calls_caller (caller),
    KEY ix_aicall_calls_reason (end_reason, started_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS aicall_transcript (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id BIGINT UNSIGNED NOT NULL,
    seq SMALLINT UNSIGNED NOT NULL,
    -- caller or assistant
    role VARCHAR(10) NOT NULL,
    spoken_at DATETIME(3) NOT NULL,
    text TEXT NOT NULL,
    -- 1 for the short "one moment" phrases spoken while a tool runs
    progress TINYINT(1) NOT NULL DEFAULT 0,
    item_id VARCHAR(64) NOT NULL DEFAULT '',
    UNIQUE KEY uq_aicall_transcript_seq (call_id, seq),
    CONSTRAINT fk_aicall_transcript_call FOREIGN KEY (call_id) REFERENCES aicall_calls (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS aicall_tool_calls (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id BIGINT UNSIGNED NOT NULL,
    seq SMALLINT UNSIGNED NOT NULL,
    name VARCHAR(64) NOT NULL,
    -- the arguments as the model sent them and the JSON result given back to it
    arguments TEXT NOT NULL,
    result MEDIUMTEXT NOT NULL,
    -- ok, error or timeout
    outcome VARCHAR(10) NOT NULL,
    started_at DATETIME(3) NOT NULL,
    duration_ms INT UNSIGNED NOT NULL,
    UNIQUE KEY uq_aicall_tool_calls_seq (call_id, seq),
    KEY ix_aicall_tool_calls_name (name, outcome),
    CONSTRAINT fk_aicall_tool_calls_call FOREIGN KEY (call_id) REFERENCES aicall_calls (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS aicall_turns (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id BIGINT UNSIGNED NOT NULL,
    seq SMALLINT UNSIGNED NOT NULL,
    -- when the model's voice detection said the caller stopped speaking
    speech_stopped_at DATETIME(3) NOT NULL,
    -- when the first assistant audio of the answer left for the caller; NULL if none did
    first_audio_at DATETIME(3) NULL,
    latency_ms INT UNSIGNED NULL,
    -- the caller spoke over the answer; played_ms is how much of it was heard
    interrupted TINYINT(1) NOT NULL DEFAULT 0,
    played_ms INT UNSIGNED NULL,
    UNIQUE KEY uq_aicall_turns_seq (call_id, seq),
    CONSTRAINT fk_aicall_turns_call FOREIGN KEY (call_id) REFERENCES aicall_calls (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per model response that reported usage (response.done).
CREATE TABLE IF NOT EXISTS aicall_usage (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id BIGINT UNSIGNED NOT NULL,
    response_id VARCHAR(64) NOT NULL,
    done_at DATETIME(3) NOT NULL,
    input_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    output_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    total_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    input_audio_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    input_text_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    input_cached_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    output_audio_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    output_text_tokens INT UNSIGNED NOT NULL DEFAULT 0,
    UNIQUE KEY uq_aicall_usage_response (call_id, response_id),
    CONSTRAINT fk_aicall_usage_call FOREIGN KEY (call_id) REFERENCES aicall_calls (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
