-- Compute: regions, the runners that register in them, snapshots (images), sandboxes, and
-- sandbox backups (box exports kept in S3).

CREATE TABLE regions (
    id            text PRIMARY KEY,                -- e.g. 'us'
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runners (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    region_id      text NOT NULL REFERENCES regions (id),
    name           text NOT NULL UNIQUE,
    api_url        text NOT NULL,
    state          text NOT NULL DEFAULT 'initializing'
                   CHECK (state IN ('initializing', 'ready', 'draining', 'unresponsive', 'disabled')),
    cpu            integer NOT NULL CHECK (cpu > 0),
    memory_mib     integer NOT NULL CHECK (memory_mib > 0),
    disk_gib       integer NOT NULL CHECK (disk_gib > 0),
    unschedulable  boolean NOT NULL DEFAULT false,
    last_heartbeat timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE snapshots (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid REFERENCES organizations (id) ON DELETE CASCADE,  -- NULL: public
    name            text NOT NULL,
    image           text NOT NULL,                 -- OCI reference
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'pulling', 'active', 'error', 'removing')),
    size_bytes      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);

CREATE TABLE sandboxes (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    region_id       text NOT NULL REFERENCES regions (id),
    runner_id       uuid REFERENCES runners (id) ON DELETE SET NULL,
    snapshot_id     uuid REFERENCES snapshots (id) ON DELETE SET NULL,
    name            text NOT NULL,
    state           text NOT NULL DEFAULT 'creating'
                    CHECK (state IN ('creating', 'started', 'stopped', 'archived', 'restoring', 'error', 'destroyed')),
    cpu             integer NOT NULL DEFAULT 1,
    memory_mib      integer NOT NULL DEFAULT 1024,
    disk_gib        integer NOT NULL DEFAULT 10,
    env             jsonb NOT NULL DEFAULT '{}',
    labels          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);
CREATE INDEX sandboxes_runner ON sandboxes (runner_id);

CREATE TABLE sandbox_backups (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sandbox_id      uuid NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    object_key      text NOT NULL,                 -- s3://backups/<box-id>/<timestamp>.tar.zst
    sha256          text NOT NULL,
    size_bytes      bigint NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'completed', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_backups_sandbox ON sandbox_backups (sandbox_id, created_at DESC);
