-- Browser sign-in (SPEC §11): redirect URIs and first-party clients, browser
-- sessions behind the gatehouse_session cookie, authorization codes, and the
-- consent a user gave a client.

alter table client add column redirect_uris text not null default '';             -- space-separated, exact
alter table client add column post_logout_redirect_uris text not null default ''; -- space-separated, exact
alter table client add column first_party bigint not null default 0;              -- 1: no consent page

-- One browser sign-in: the `sid` of every token issued through it.
create table browser_session (
    id text primary key,              -- a UUID: the sid
    digest blob not null unique,        -- SHA-256 of the cookie value
    user_id text not null references user_account (id) on delete cascade,
    auth_time bigint not null,
    expires_at bigint not null,       -- auth_time + GATEHOUSE_SESSION_MAX_AGE
    ended_at bigint                   -- logout, logout-all, password change or reset
);
create index browser_session_user on browser_session (user_id);

-- A refresh chain started by an authorization code belongs to the browser session.
alter table login_session add column browser_session_id text references browser_session (id) on delete cascade;
create index login_session_browser on login_session (browser_session_id);

-- Authorization codes (RFC 6749 §4.1.2): single use, 60 s.
create table authorization_code (
    digest blob primary key,            -- SHA-256 of the code
    client_id text not null references client (id) on delete cascade,
    browser_session_id text not null references browser_session (id) on delete cascade,
    redirect_uri text not null,
    redirect_uri_given bigint not null, -- 1 when the request named it: the exchange must repeat it
    scope text not null,
    nonce text,
    code_challenge text,              -- S256 (RFC 7636)
    expires_at bigint not null,
    used_at bigint,
    login_session_id text,            -- the chain the exchange started: revoked on replay
    access_jti text,                  -- the access token the exchange issued: revoked on replay
    access_expires_at bigint
);
create index authorization_code_expires on authorization_code (expires_at);

-- Scopes a user approved for a client on the consent page.
create table consent (
    user_id text not null references user_account (id) on delete cascade,
    client_id text not null references client (id) on delete cascade,
    scope text not null,
    granted_at bigint not null,
    primary key (user_id, client_id)
);
