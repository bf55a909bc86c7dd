-- A rotation writes one index fewer (issue 6): "at most one successor per
-- token" is checked by this trigger instead of a unique index on `parent`.
-- The index cost an insert at a random place in its B-tree on every
-- rotation (3 to 6 % of refresh throughput, in pairs of runs); the check
-- reads the parent's row, which the rotation has just read and is about to
-- update. A token already used gets no successor: a stronger rule than the
-- index's, as a used token's successor is its only one.
drop index refresh_token_parent;
create trigger refresh_token_parent_unused before insert on refresh_token
when new.parent is not null
begin
    select raise(abort, 'this refresh token was already replaced')
    from refresh_token where digest = new.parent and used_at is not null;
end;
