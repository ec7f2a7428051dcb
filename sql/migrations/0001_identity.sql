-- Identities and tenancy: users (keyed by their OIDC subject), organizations, memberships with
-- roles, and API keys (stored as SHA-256 hashes, never in clear).

CREATE TABLE users (
    id            text PRIMARY KEY,                -- OIDC subject (Dex: base64 of userID + connector)
    email         text NOT NULL UNIQUE,
    name          text NOT NULL DEFAULT '',
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE organizations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    personal      boolean NOT NULL DEFAULT false,
    created_by    text NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Every user has at most one personal organization.
CREATE UNIQUE INDEX organizations_one_personal ON organizations (created_by) WHERE personal;

CREATE TABLE organization_users (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id         text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('owner', 'member')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, user_id)
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id         text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL,
    key_hash        text NOT NULL UNIQUE,          -- hex SHA-256 of the key
    permissions     text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    UNIQUE (organization_id, name)
);
