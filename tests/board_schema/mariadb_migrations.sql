-- Today's board on MariaDB (alembic 10eef13f525a, 2026-08) as its schema really got there: the
-- seed-era tables of mariadb_seed.sql (c2149d2, alembic d1e2f3a4b5c6), then the board's later
-- migrations as ALTER statements, written from docs/board.md (§1 for HEAD, §5 for the
-- differences). Where board.md names the migration it is named below; it does not give the order
-- of the others, so they are grouped one ALTER per table (one table copy each, so the fixture
-- stays quick). fleet's own create_schema is NOT used on this database.

-- 7998a5544aba_add_audit_trail_tables: the status history (§1, image_status_history).
CREATE TABLE image_status_history (
  id int(10) unsigned NOT NULL AUTO_INCREMENT,
  image_id int(10) unsigned NOT NULL,
  old_status int(11) NOT NULL,
  new_status int(11) NOT NULL,
  user_id int(10) unsigned DEFAULT NULL,
  created_at datetime DEFAULT current_timestamp(),
  report_id int(10) unsigned DEFAULT NULL,
  review_id int(10) unsigned DEFAULT NULL,
  PRIMARY KEY (id),
  CONSTRAINT fk_image_status_history_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE,
  CONSTRAINT fk_image_status_history_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_status_history_report_id FOREIGN KEY (report_id) REFERENCES image_reports (report_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_status_history_review_id FOREIGN KEY (review_id) REFERENCES image_reviews (review_id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- ba007b19d0f1_image_status_deactivated: the history gets a reason (the images' follows below).
ALTER TABLE image_status_history
  ADD COLUMN reason_category int(11) DEFAULT NULL AFTER created_at,
  ADD COLUMN reason varchar(1000) DEFAULT NULL AFTER reason_category;

-- images, from c2149d2 to HEAD (§5): utf8mb4; the legacy columns dropped; ip and
-- original_filename widened; medium/large tinyint(3), so drivers do not read them as booleans
-- (f8e2a1f956eb); r2_location and its index (6ad847e3bc00); the IQDB hash, the has_* flags, the
-- status reason and the source URL added.
ALTER TABLE images
  CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci,
  DROP COLUMN useragent,
  DROP COLUMN last_updated,
  DROP COLUMN image_source,
  DROP COLUMN artist,
  DROP COLUMN characters,
  DROP COLUMN reviewed,
  DROP COLUMN change_id,
  MODIFY ip varchar(45) NOT NULL,
  MODIFY original_filename varchar(255) DEFAULT NULL,
  MODIFY medium tinyint(3) NOT NULL DEFAULT 0,
  MODIFY large tinyint(3) NOT NULL DEFAULT 0,
  ADD COLUMN r2_location tinyint(3) unsigned NOT NULL DEFAULT 0,
  ADD COLUMN iqdb_hash varchar(533) DEFAULT NULL,
  ADD COLUMN has_theme tinyint(1) NOT NULL DEFAULT 0,
  ADD COLUMN has_source tinyint(1) NOT NULL DEFAULT 0,
  ADD COLUMN has_artist tinyint(1) NOT NULL DEFAULT 0,
  ADD COLUMN has_character tinyint(1) NOT NULL DEFAULT 0,
  ADD COLUMN reason_category int(11) DEFAULT NULL,
  ADD COLUMN status_reason varchar(1000) DEFAULT NULL,
  ADD COLUMN source_url varchar(2000) DEFAULT NULL,
  ADD KEY idx_r2_location (r2_location);

-- ba007b19d0f1 again: the legacy statuses LOW_QUALITY (-3) and INAPPROPRIATE (-2) become
-- DEACTIVATED (0) with their reason (the board's data migration; no rows here).
UPDATE images SET status = 0, reason_category = 2 WHERE status = -3;
UPDATE images SET status = 0, reason_category = 1 WHERE status = -2;

-- image_reviews (§5): review_type became reason_category; closed_by and reason added.
ALTER TABLE image_reviews
  CHANGE COLUMN review_type reason_category int(11) NOT NULL DEFAULT 1,
  ADD COLUMN closed_by int(10) unsigned DEFAULT NULL,
  ADD COLUMN reason varchar(1000) DEFAULT NULL,
  ADD CONSTRAINT fk_image_reviews_closed_by FOREIGN KEY (closed_by) REFERENCES users (user_id) ON DELETE SET NULL;

-- review_votes.comment (§5): utf8mb3 text became mediumtext in the table's utf8mb4.
ALTER TABLE review_votes MODIFY comment mediumtext DEFAULT NULL;

-- The other legacy tables fleet touches (§5: utf8mb3 then, utf8mb4 at HEAD).
ALTER TABLE users CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE image_ratings CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
