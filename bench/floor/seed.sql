-- Copied unchanged from the project's shared baseline (shared/bench/); only this comment was added.
-- Baseline users table: 10,000 rows, integer primary key.
-- Usage: psql "postgresql://postgres@127.0.0.1:5432/bench" -f seed.sql
DROP TABLE IF EXISTS users;
CREATE TABLE users (
    id              integer PRIMARY KEY,
    email           varchar(255) NOT NULL UNIQUE,
    full_name       varchar(255),
    is_active       boolean NOT NULL DEFAULT true,
    is_superuser    boolean NOT NULL DEFAULT false,
    hashed_password varchar(255) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO users (id, email, full_name, is_active, is_superuser, hashed_password, created_at)
SELECT g,
       'user' || g || '@example.com',
       'User Number ' || g,
       true,
       g = 1,
       '$argon2id$v=19$m=65536,t=3,p=4$c2VlZHNhbHRzZWVkc2FsdA$' || md5(g::text),
       now() - g * interval '1 minute'
FROM generate_series(1, 10000) AS g;
ANALYZE users;
