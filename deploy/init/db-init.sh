#!/bin/sh
# fitcycle's PostgreSQL roles, made (or brought up to date) with the superuser's credentials, which nothing else
# is given: compose's `db-init` service runs this at every `up`, Kubernetes in the migration Job's initContainer.
# Idempotent: a second run changes nothing but the passwords, which it sets again.
#   PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE   the superuser and fitcycle's database (libpq reads them)
#   DB_OWNER, DB_OWNER_PASSWORD       owns the schema: only the migration step (`fitcycle db upgrade`) logs in as it
#   DB_APP_USER, DB_APP_PASSWORD      the API's and the workers': reads and writes rows, changes no schema
# Neither role is a superuser or may create databases or roles; nobody else may connect to the database. Tables
# made before these roles existed (a deployment whose migrations ran as the superuser) pass to the owner.
set -eu
: "${DB_OWNER:?}" "${DB_OWNER_PASSWORD:?}" "${DB_APP_USER:?}" "${DB_APP_PASSWORD:?}" "${PGDATABASE:?}"

exec psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 <<'SQL'
\getenv owner DB_OWNER
\getenv owner_password DB_OWNER_PASSWORD
\getenv app DB_APP_USER
\getenv app_password DB_APP_PASSWORD
SELECT current_database() AS db \gset

SELECT format('CREATE ROLE %I', :'owner') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I', :'app') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"owner" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
ALTER ROLE :"app" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';

REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"owner";
GRANT CONNECT ON DATABASE :"db" TO :"app";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"owner";
GRANT USAGE ON SCHEMA public TO :"app";

-- Tables first: a table takes the sequences of its serial columns along.
SELECT format('ALTER TABLE public.%I OWNER TO %I', tablename, :'owner')
  FROM pg_tables WHERE schemaname = 'public' AND tableowner <> :'owner' \gexec
SELECT format('ALTER SEQUENCE public.%I OWNER TO %I', sequencename, :'owner')
  FROM pg_sequences WHERE schemaname = 'public' AND sequenceowner <> :'owner' \gexec

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"app";
SQL
