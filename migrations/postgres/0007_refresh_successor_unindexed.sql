-- A rotation writes one index fewer (issue 6): the unique index on `parent`
-- goes. It cost an insert at a random place in its B-tree on every rotation
-- (about 3 % of refresh throughput, in pairs of runs), and one entry more
-- whenever the update of a rotated token's `used_at` could not stay on its
-- page. It guarded nothing the statements do not: every token with a parent
-- is inserted by the statement that consumed the parent, from the rows its
-- `update ... where used_at is null` returned, and that update holds the
-- parent's row lock; a racing rotation waits for it, checks `used_at` again
-- and consumes nothing.
drop index refresh_token_parent;
