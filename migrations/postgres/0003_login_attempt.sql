-- Failed password logins per username, for the login back-off of SPEC §10.
-- The key is the normalised username whether or not such an account exists,
-- stored as a digest so that typed usernames (and their typos) are not kept
-- in clear. Shared by every instance, so the back-off holds across them and
-- across restarts.
create table login_attempt (
    username_digest bytea primary key,  -- SHA-256 of the normalised username
    failures bigint not null,          -- attempts since the last success; an attempt counts when it starts
    last_attempt_at bigint not null,
    blocked_until bigint not null      -- attempts are refused while now < blocked_until; 0 when not backed off
);
-- Finds the rows gone quiet, to prune them.
create index login_attempt_last_attempt on login_attempt (last_attempt_at);
