-- An outbox as the agent at main 0de7272 (before c8a657b dropped the size column) made it: two
-- alarms (seq 1 not yet sent, seq 2 delivered and awaiting the centre's receipt) and a clip
-- chunk whose bytes are a range of a spool file. Made by that commit's Outbox (add_alarm,
-- mark_delivered, add with a BlobRef), then sqlite3's iterdump: tests/test_outbox.py loads it,
-- pointing blob_path (the spool file where it was made) at a spool file of its own.
BEGIN TRANSACTION;
CREATE TABLE messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    priority  INTEGER NOT NULL,
    topic     TEXT    NOT NULL,
    key       TEXT    NOT NULL UNIQUE,   -- event_id / chunk id: enqueueing twice is a no-op
    qos       INTEGER NOT NULL,
    retain    INTEGER NOT NULL,
    payload   BLOB    NOT NULL,          -- the whole message, or the header of a file chunk
    blob_path TEXT,                      -- clip chunks: bytes are read from the spool at send time
    blob_off  INTEGER,
    blob_len  INTEGER,
    size      INTEGER NOT NULL,          -- bytes this row stands for, for the disk budget
    state     INTEGER NOT NULL DEFAULT 0, -- 0 ready, 1 delivered to the broker, awaiting receipt
    seq       INTEGER                     -- alarms: their seq, the order they are sent in
);
INSERT INTO "messages" VALUES(1,0,'schools/site-a/alarm','waiting',1,0,X'7B22736571223A317D',NULL,NULL,NULL,9,0,1);
INSERT INTO "messages" VALUES(2,0,'schools/site-a/alarm','unconfirmed',1,0,X'7B22736571223A327D',NULL,NULL,NULL,9,1,2);
INSERT INTO "messages" VALUES(3,3,'schools/site-a/clip/cam','ev/cam/0/0',1,0,X'484541440A','/tmp/gen/seg.ts',2,5,10,0,NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO "meta" VALUES('seq',2);
CREATE INDEX messages_order ON messages (priority, id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('messages',3);
COMMIT;
