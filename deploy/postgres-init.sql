-- One database per service: each service owns its tables, no service reads another's.
CREATE DATABASE gateway;
CREATE DATABASE matcher;
CREATE DATABASE consent;
CREATE DATABASE audit;
CREATE DATABASE retention;
