#!/bin/sh
# One role and one database per service: each service can reach only its own tables.
# Passwords come from MIXIP_<SERVICE>_DB_PASSWORD (development defaults otherwise).
set -eu
for service in gateway matcher consent audit retention; do
  variable="MIXIP_$(echo "$service" | tr 'a-z' 'A-Z')_DB_PASSWORD"
  password=$(eval "printf '%s' \"\${$variable:-$service-dev-only}\"")
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE $service LOGIN PASSWORD '$password';
CREATE DATABASE $service OWNER $service;
REVOKE ALL ON DATABASE $service FROM PUBLIC;
SQL
done
