"""The call log's schema: numbered migrations both engines apply at start-up, and the names the
rest of the call log shares (the `calls` columns, the end reasons).

Migrations: version -> statements. Applied in order, each version once, recorded in
schema_migrations (engine.py). Written in the SQL both engines accept (DOUBLE PRECISION is REAL in
SQLite).
"""

from __future__ import annotations

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE calls (
            call_id TEXT PRIMARY KEY,
            stream_id TEXT,
            network TEXT NOT NULL DEFAULT 'twilio',
            from_number TEXT,
            to_number TEXT,
            bot TEXT,
            provider TEXT,
            model TEXT,
            instance TEXT,
            webhook_at DOUBLE PRECISION,
            started_at DOUBLE PRECISION,
            first_audio_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            duration_s DOUBLE PRECISION,
            end_reason TEXT,
            error TEXT,
            barge_ins INTEGER NOT NULL DEFAULT 0,
            turns INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            recording TEXT
        )""",
        "CREATE INDEX calls_started ON calls (started_at)",
        "CREATE INDEX calls_bot_started ON calls (bot, started_at)",
        "CREATE INDEX calls_open ON calls (instance, ended_at)",
        """CREATE TABLE call_events (
            call_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            t DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            text TEXT,
            data TEXT NOT NULL,
            PRIMARY KEY (call_id, seq)
        )""",
    ],
    2: ["ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound'"],
    # Instance leases (see `hold_lease`), and an index of the open calls that the periodic sweeps
    # look at, so that they never scan the whole history (partial indexes: both engines have them).
    3: [
        """CREATE TABLE instance_leases (
            instance TEXT PRIMARY KEY,
            acquired_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX calls_unended ON calls (instance) WHERE ended_at IS NULL",
    ],
    # Model session slots (see `take_slot`), and which key served a call / why it overflowed.
    4: [
        """CREATE TABLE model_slots (
            provider TEXT NOT NULL,
            key_fp TEXT NOT NULL,
            slot INTEGER NOT NULL,
            call_id TEXT NOT NULL,
            instance TEXT NOT NULL,
            taken_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            PRIMARY KEY (provider, key_fp, slot)
        )""",
        "CREATE INDEX model_slots_call ON model_slots (call_id)",
        "ALTER TABLE calls ADD COLUMN model_key TEXT",
        "ALTER TABLE calls ADD COLUMN overflow TEXT",
    ],
    # Call webhooks waiting for (or done with) delivery: see gateway/webhooks.py. A row is claimed
    # by one instance at a time (claimed_by/claimed_until) so two never deliver it together.
    5: [
        """CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            event TEXT NOT NULL,
            call_id TEXT,
            body TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            next_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            claimed_by TEXT,
            claimed_until DOUBLE PRECISION,
            delivered_at DOUBLE PRECISION,
            abandoned_at DOUBLE PRECISION,
            last_error TEXT
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) "
        "WHERE delivered_at IS NULL AND abandoned_at IS NULL",
    ],
    # Commands for a call that runs on another instance or worker (an operator's hang-up arrived
    # elsewhere): the owner polls for its own (see calllog/instances.py).
    6: [
        """CREATE TABLE call_commands (
            id TEXT PRIMARY KEY,  -- random, made by the sender (portable: no serials)
            instance TEXT NOT NULL,
            call_id TEXT NOT NULL,
            command TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            taken_at DOUBLE PRECISION
        )""",
        "CREATE INDEX call_commands_open ON call_commands (instance) WHERE taken_at IS NULL",
    ],
    # Outbound calls: who answered, as Twilio's answering-machine detection says (human, machine_end_beep, ...).
    7: ["ALTER TABLE calls ADD COLUMN answered_by TEXT"],
}
SCHEMA_VERSION = max(MIGRATIONS)
MIGRATIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")

CALL_FIELDS = ("stream_id", "network", "direction", "from_number", "to_number", "bot", "provider", "model", "instance",
               "webhook_at", "started_at", "first_audio_at", "ended_at", "duration_s", "end_reason", "error",
               "barge_ins", "turns", "input_tokens", "output_tokens", "recording", "model_key", "overflow",
               "answered_by")
END_REASONS = ("caller_hangup", "bot_hangup", "transferred", "operator_hangup", "model_error", "model_closed",
               "max_duration", "silence_timeout", "protocol_error", "internal_error", "shutdown", "crashed", "no_stream",
               "refused", "answering_machine")
