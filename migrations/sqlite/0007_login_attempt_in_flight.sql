-- Attempts in flight per username: started (and so counted as failures) but
-- not yet finished. While a username is backed off only because such
-- attempts might still fail, a new attempt waits for them instead of being
-- refused: a success clears the count, and a right password must not be
-- turned away because other right ones were being checked at the same time.
-- An attempt that never finishes (its instance died, or its request timed
-- out) stops counting as in flight at `in_flight_until`.
alter table login_attempt add column in_flight bigint not null default 0;
alter table login_attempt add column in_flight_until bigint not null default 0;
