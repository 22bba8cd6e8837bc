-- SIP traces keep each message's bytes as they went over the wire. A SIP
-- message is not bound to be valid UTF-8 (a user agent, a display name or an
-- SDP session name may carry any byte), and a text column refused such a
-- message: with it, the whole multi-row INSERT of Kamailio's trace writer,
-- and the traces of every call in that batch. Kamailio sends the message as a
-- binary string (_binary '...'), and the column takes any byte.

ALTER TABLE sip_traces MODIFY message MEDIUMBLOB NOT NULL;
