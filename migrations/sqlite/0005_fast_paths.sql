-- Hot paths in one statement each (issue 6).

-- A refresh is one statement: the new token is inserted naming the token it
-- replaces, and this trigger consumes that one in the same statement, so a
-- rotation is never half done. SQLite has a single writer, so the insert's
-- check that the parent is unused cannot race.
alter table refresh_token add column parent blob;  -- the token this one replaced
-- At most one successor per token, whatever the code above does.
create unique index refresh_token_parent on refresh_token (parent) where parent is not null;
create trigger refresh_token_rotated after insert on refresh_token
when new.parent is not null
begin
    update refresh_token set used_at = new.issued_at where digest = new.parent;
end;

-- Clients are cached by each instance; every change to the client table moves
-- this counter, which instances poll once a second to drop their copies.
create table client_generation (
    id integer primary key check (id = 1),
    generation bigint not null
);
insert into client_generation (id, generation) values (1, 0);
create trigger client_inserted after insert on client
begin
    update client_generation set generation = generation + 1 where id = 1;
end;
create trigger client_updated after update on client
begin
    update client_generation set generation = generation + 1 where id = 1;
end;
create trigger client_deleted after delete on client
begin
    update client_generation set generation = generation + 1 where id = 1;
end;
