-- Ordering's replica of the catalogue: the current name and unit price of every product,
-- kept from inventory's `ProductDefined` and `ProductRepriced` events. Orders are priced from
-- here, never from the client.
--
-- `version` is the product's aggregate sequence in inventory's event store (the event's
-- `Chorus-Sequence`): a row only ever moves to a higher version, so a redelivered or late
-- event changes nothing.
CREATE TABLE catalogue (
    sku          text   PRIMARY KEY,
    name         text   NOT NULL,
    price_minor  bigint NOT NULL,
    currency     text   NOT NULL,
    version      bigint NOT NULL CHECK (version > 0)
);
