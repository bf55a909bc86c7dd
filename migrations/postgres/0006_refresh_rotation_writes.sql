-- A refresh rotation writes less (issue 6). PostgreSQL only: SQLite neither
-- locks rows nor keeps old row versions, and its checks cost no round trip.

-- Room on each page for a token's one update (`used_at`), so the new row
-- version stays on its page (a HOT update: no new index entries). With the
-- default (100) about a quarter of rotations wrote a version elsewhere and
-- an entry in each of the table's three indexes. Pages written from now on.
alter table refresh_token set (fillfactor = 70);

-- No foreign key from a refresh token to its login: checking it locked the
-- login's row (`for key share`), which wrote to that row and to the log on
-- every rotation. A login's tokens are deleted with it by the trigger below
-- instead (also when a user's or a client's deletion cascades to the login),
-- one index lookup per login as the cascade did. A token inserted for a
-- login deleted meanwhile is never found: every lookup joins its login.
-- Pruning deletes it once it expires.
alter table refresh_token drop constraint refresh_token_session_id_fkey;
create function refresh_token_delete_with_login() returns trigger language plpgsql as $$
begin
    delete from refresh_token where session_id = old.id;
    return null;
end
$$;
create trigger login_session_deleted after delete on login_session
for each row execute function refresh_token_delete_with_login();
