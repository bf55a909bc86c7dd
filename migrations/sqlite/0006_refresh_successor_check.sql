-- A rotation writes one index fewer (issue 6): "at most one successor per
-- token" is checked by this trigger instead of a unique index on `parent`.
-- The index cost an insert at a random place in its B-tree on every
-- rotation (3 to 6 % of refresh throughput, in pairs of runs); the check
-- reads the parent's row, which the rotation has just read and is about to
-- update. A successor needs a parent that exists and is unused, a stronger
-- rule than the index's: the used parent's successor is its only one.
drop index refresh_token_parent;
create trigger refresh_token_parent_unused before insert on refresh_token
when new.parent is not null
begin
    select raise(abort, 'the replaced refresh token is used or missing')
    where not exists (select 1 from refresh_token where digest = new.parent and used_at is null);
end;
