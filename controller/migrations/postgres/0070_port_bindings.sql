-- Which instance a port is bound to by the compute API's own flow (a port
-- it made for a server, or one the server create named in `networks`).
-- `device_id` is a field any client may write; only this column makes the
-- conductor plug a port into an instance. Ports already in use by a live
-- server of their own project keep working.
ALTER TABLE ports ADD COLUMN bound_instance TEXT NOT NULL DEFAULT '';

UPDATE ports SET bound_instance = device_id
 WHERE device_owner LIKE 'compute:%'
   AND EXISTS (SELECT 1 FROM instances i
                WHERE i.uuid = ports.device_id
                  AND i.project_id = ports.project_id
                  AND i.deleted = FALSE);

CREATE INDEX ports_bound_instance_idx ON ports (bound_instance);
