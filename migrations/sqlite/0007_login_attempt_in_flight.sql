-- Attempts in flight per username: started (and so counted as failures) but
-- not yet finished. While a username is backed off only because such
-- attempts might still fail, a new attempt waits for them instead of being
-- refused: a success clears the count, and a right password must not be
-- turned away because other right ones were being checked at the same time.
-- An attempt given up halfway takes itself out; one that never finishes
-- (its instance died) stops counting at `in_flight_until`, a request
-- timeout and a second after the username's last attempt started.
alter table login_attempt add column in_flight bigint not null default 0;
alter table login_attempt add column in_flight_until bigint not null default 0;
