-- The audit log: who did what to which object, append-only.

CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id uuid REFERENCES organizations (id) ON DELETE SET NULL,
    actor_id        text,                          -- a user id or 'api-key:<uuid>'
    action          text NOT NULL,                 -- e.g. 'sandbox.create'
    target_type     text NOT NULL,
    target_id       text,
    status_code     integer,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org_time ON audit_log (organization_id, created_at DESC);
