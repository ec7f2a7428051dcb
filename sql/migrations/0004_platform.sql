-- The control plane's own columns: the image a sandbox runs (an OCI reference in the stack's
-- registry, passed to its runner) and how many sandboxes a runner says it can hold.

ALTER TABLE sandboxes ADD COLUMN image text NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN capacity integer NOT NULL DEFAULT 10 CHECK (capacity > 0);
