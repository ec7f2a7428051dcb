-- Sandbox backups and migrations between runners (docs/platform.md, "Backups, restores and
-- migrations"). A backup row is written once its object is complete in S3; a migration row is
-- the ledger a control plane restarted mid-migration reads to finish or roll back.

ALTER TABLE sandbox_backups ADD COLUMN bucket text NOT NULL DEFAULT 'backups';
ALTER TABLE sandbox_backups ADD COLUMN runner_id uuid REFERENCES runners (id) ON DELETE SET NULL;
ALTER TABLE sandbox_backups ADD COLUMN exported_at timestamptz;

CREATE TABLE sandbox_migrations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sandbox_id       uuid NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    source_runner_id uuid NOT NULL REFERENCES runners (id) ON DELETE CASCADE,
    target_runner_id uuid NOT NULL REFERENCES runners (id) ON DELETE CASCADE,
    state_before     text NOT NULL CHECK (state_before IN ('started', 'stopped')),
    -- backup, restore: the sandbox is still on its source (a restart rolls back);
    -- cleanup: it is on its target, the source's copy is still to delete (a restart finishes).
    phase            text NOT NULL DEFAULT 'backup'
                     CHECK (phase IN ('backup', 'restore', 'cleanup', 'done', 'rolled_back')),
    backup_id        bigint REFERENCES sandbox_backups (id) ON DELETE SET NULL,
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- At most one migration of a sandbox under way.
CREATE UNIQUE INDEX sandbox_migrations_open ON sandbox_migrations (sandbox_id)
    WHERE phase IN ('backup', 'restore', 'cleanup');
