-- The token core: clients, users, login sessions with their refresh chains,
-- revoked access tokens and signing-key state. Instants are Unix seconds.

-- An OAuth client (RFC 6749 §2).
create table client (
    id text primary key,              -- a UUID
    name text not null,
    secret_digest blob,               -- SHA-256 of the secret; null for a public client
    grant_types text not null,        -- space-separated grant_type values
    scopes text not null,             -- space-separated scopes given with --scope
    created_at bigint not null
);

create table user_account (
    id text primary key,              -- a UUID
    email text not null,              -- as given
    email_lower text not null unique, -- lowercased in Rust: both backends compare alike
    password_hash text not null,      -- argon2id PHC string
    name text,
    roles text not null default '',   -- space-separated
    email_verified_at bigint,
    disabled_at bigint,
    created_at bigint not null
);

-- One login (the `sid`): the refresh chain it started and everything signed for it.
create table login_session (
    id text primary key,
    user_id text not null references user_account (id) on delete cascade,
    client_id text not null references client (id) on delete cascade,
    scope text not null,              -- the scope granted at login
    auth_time bigint not null,
    expires_at bigint not null,       -- absolute end: GATEHOUSE_SESSION_MAX_AGE
    revoked_at bigint                 -- set when the chain is ended; tokens die with it
);
create index login_session_user on login_session (user_id);

-- Refresh tokens, single use: a used one is kept to detect reuse.
create table refresh_token (
    digest blob primary key,          -- SHA-256 of the token
    session_id text not null references login_session (id) on delete cascade,
    issued_at bigint not null,
    expires_at bigint not null,       -- idle end: GATEHOUSE_REFRESH_TOKEN_TTL
    used_at bigint
);
create index refresh_token_session on refresh_token (session_id);

-- Access tokens revoked before their expiry (RFC 7009), by `jti`.
create table revoked_access_token (
    jti text primary key,
    expires_at bigint not null
);

-- Signing-key state; the private keys are files named <kid>.pem.
create table signing_key (
    kid text primary key,             -- RFC 7638 thumbprint
    created_at bigint not null,
    signs_from bigint not null,       -- published at once, signs from here on
    retired_at bigint                 -- stops signing; unpublished once its tokens expired
);
