-- Idempotent: creates the `boxlite` database only when it is missing.
SELECT 'CREATE DATABASE boxlite OWNER boxlite'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'boxlite')
\gexec
