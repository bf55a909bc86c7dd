-- Hot paths in one statement each (issue 6).

-- A refresh is one statement: a CTE consumes the presented token (the row
-- lock makes exactly one of racing rotations win) and inserts its successor,
-- which names the token it replaced.
alter table refresh_token add column parent bytea;  -- the token this one replaced
-- At most one successor per token, whatever the code above does.
create unique index refresh_token_parent on refresh_token (parent) where parent is not null;

-- Clients are cached by each instance; every change to the client table moves
-- this counter, which instances poll once a second to drop their copies.
create table client_generation (
    id integer primary key check (id = 1),
    generation bigint not null
);
insert into client_generation (id, generation) values (1, 0);
create function client_generation_bump() returns trigger language plpgsql as $$
begin
    update client_generation set generation = generation + 1 where id = 1;
    return null;
end
$$;
create trigger client_changed after insert or update or delete on client
for each statement execute function client_generation_bump();
