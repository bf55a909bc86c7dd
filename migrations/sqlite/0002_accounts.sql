-- The account life cycle: e-mail verification and password-reset tokens,
-- and the durable outgoing mail queue.

-- Single-use tokens mailed to a user. Only their digest is stored.
create table account_token (
    digest blob primary key,          -- SHA-256 of the token
    user_id text not null references user_account (id) on delete cascade,
    purpose text not null,            -- 'verify_email' or 'reset_password'
    created_at bigint not null,
    expires_at bigint not null,
    used_at bigint
);
create index account_token_user on account_token (user_id);

-- Outgoing mail, queued in the transaction that made the token it carries,
-- so a crash or an SMTP outage loses nothing.
create table mail_message (
    id text primary key,              -- a UUID; the stable Message-ID is <id@host>
    recipient text not null,
    subject text not null,
    body_text text,                   -- cleared once sent or expired: it may hold a link
    body_html text,
    user_id text references user_account (id) on delete cascade,
    created_at bigint not null,
    expires_at bigint not null,       -- when the token it carries expires; never sent after
    next_attempt_at bigint not null,
    attempts bigint not null default 0,
    lease_until bigint,               -- an instance is sending it until then
    sent_at bigint,
    last_error text                   -- the last delivery error, without secrets
);
create index mail_message_due on mail_message (sent_at, next_attempt_at);
