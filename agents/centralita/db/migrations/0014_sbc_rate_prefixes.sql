-- A rate names the digits it applies to: 1-32 digits, as `centralita rates
-- import` already requires. An empty prefix would match every number in
-- Kamailio's routing (which looks the dialling plan's prefixes up in the same
-- list, the empty one included) while billing looks up prefixes of one digit
-- and more: a call routed only by such a rate would be filed with no cost and
-- no price. The database now refuses it for every writer (the panel, SQL by
-- hand), not only the import.
--
-- On a database that already holds such a row this migration stops, naming
-- the constraint; give the row a prefix (or delete it) and run the upgrade
-- again.

ALTER TABLE carrier_rates
    ADD CONSTRAINT ck_carrier_rates_prefix CHECK (prefix REGEXP '^[0-9]{1,32}$');

ALTER TABLE customer_rates
    ADD CONSTRAINT ck_customer_rates_prefix CHECK (prefix REGEXP '^[0-9]{1,32}$');
