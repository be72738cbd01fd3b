-- The board's tables that fleet touches, as shuushuu-api's MariaDB migrations leave them at
-- HEAD (alembic 10eef13f525a, 2026-08), written from the facts in docs/board.md §1 (columns,
-- types, nullability, defaults, keys). fleet's own create_schema is NOT used on this database.
-- `users` and `image_reports` are cut to their keys: they are here for the foreign keys.
CREATE TABLE users (
  user_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  username varchar(30) NOT NULL,
  PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE image_reports (
  report_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  PRIMARY KEY (report_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE images (
  image_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  user_id int(10) unsigned NOT NULL,
  date_added datetime DEFAULT current_timestamp(),
  ip varchar(45) NOT NULL,
  status_user_id int(10) unsigned DEFAULT NULL,
  status_updated datetime DEFAULT NULL,
  status tinyint(2) NOT NULL DEFAULT 1,
  locked tinyint(1) NOT NULL DEFAULT 0,
  last_post datetime DEFAULT NULL,
  filename varchar(120) DEFAULT NULL,
  ext varchar(10) NOT NULL,
  md5_hash varchar(32) NOT NULL DEFAULT '',
  original_filename varchar(255) DEFAULT NULL,
  filesize int(9) unsigned NOT NULL DEFAULT 0,
  width smallint(6) unsigned NOT NULL DEFAULT 0,
  height smallint(6) unsigned NOT NULL DEFAULT 0,
  total_pixels decimal(6,3) unsigned DEFAULT NULL,
  medium tinyint(3) NOT NULL DEFAULT 0,
  large tinyint(3) NOT NULL DEFAULT 0,
  posts smallint(4) unsigned NOT NULL DEFAULT 0,
  favorites smallint(4) unsigned NOT NULL DEFAULT 0,
  caption varchar(35) NOT NULL DEFAULT '',
  miscmeta varchar(255) DEFAULT NULL,
  rating float NOT NULL DEFAULT 0,
  bayesian_rating float NOT NULL DEFAULT 0,
  num_ratings int(4) unsigned NOT NULL DEFAULT 0,
  replacement_id int(10) unsigned DEFAULT NULL,
  r2_location tinyint(3) unsigned NOT NULL DEFAULT 0,
  iqdb_hash varchar(533) DEFAULT NULL,
  has_theme tinyint(1) NOT NULL DEFAULT 0,
  has_source tinyint(1) NOT NULL DEFAULT 0,
  has_artist tinyint(1) NOT NULL DEFAULT 0,
  has_character tinyint(1) NOT NULL DEFAULT 0,
  reason_category int(11) DEFAULT NULL,
  status_reason varchar(1000) DEFAULT NULL,
  source_url varchar(2000) DEFAULT NULL,
  PRIMARY KEY (image_id),
  KEY idx_status (status),
  KEY idx_r2_location (r2_location),
  KEY idx_bayesian_rating (bayesian_rating),
  CONSTRAINT fk_images_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE ON UPDATE CASCADE,
  CONSTRAINT fk_images_status_user_id FOREIGN KEY (status_user_id) REFERENCES users (user_id) ON DELETE SET NULL ON UPDATE CASCADE,
  CONSTRAINT fk_images_replacement_id FOREIGN KEY (replacement_id) REFERENCES images (image_id) ON DELETE SET NULL ON UPDATE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE image_ratings (
  user_id int(10) unsigned NOT NULL,
  image_id int(10) unsigned NOT NULL,
  rating tinyint(2) NOT NULL DEFAULT 0,
  date datetime DEFAULT current_timestamp(),
  PRIMARY KEY (user_id, image_id),
  KEY idx_image_ratings_image_id (image_id),
  CONSTRAINT fk_image_ratings_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE,
  CONSTRAINT fk_image_ratings_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE image_reviews (
  review_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  image_id int(10) unsigned NOT NULL,
  source_report_id int(10) unsigned DEFAULT NULL,
  initiated_by int(10) unsigned DEFAULT NULL,
  reason_category int(11) NOT NULL DEFAULT 1,
  deadline datetime DEFAULT NULL,
  extension_used int(11) NOT NULL DEFAULT 0,
  status int(11) NOT NULL DEFAULT 0,
  outcome int(11) NOT NULL DEFAULT 0,
  created_at datetime DEFAULT current_timestamp(),
  closed_at datetime DEFAULT NULL,
  closed_by int(10) unsigned DEFAULT NULL,
  reason varchar(1000) DEFAULT NULL,
  PRIMARY KEY (review_id),
  KEY idx_image_reviews_status (status),
  KEY idx_image_reviews_deadline (deadline),
  CONSTRAINT fk_image_reviews_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE,
  CONSTRAINT fk_image_reviews_source_report_id FOREIGN KEY (source_report_id) REFERENCES image_reports (report_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_reviews_initiated_by FOREIGN KEY (initiated_by) REFERENCES users (user_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_reviews_closed_by FOREIGN KEY (closed_by) REFERENCES users (user_id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE review_votes (
  vote_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  image_id int(10) unsigned DEFAULT NULL,
  user_id int(10) unsigned DEFAULT NULL,
  vote tinyint(1) DEFAULT NULL,
  review_id int(10) unsigned DEFAULT NULL,
  comment mediumtext DEFAULT NULL,
  created_at datetime DEFAULT current_timestamp(),
  PRIMARY KEY (vote_id),
  UNIQUE KEY idx_review_votes_review_user (review_id, user_id),
  KEY idx_review_votes_image_user (image_id, user_id),
  CONSTRAINT fk_review_votes_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE,
  CONSTRAINT fk_review_votes_review_id FOREIGN KEY (review_id) REFERENCES image_reviews (review_id) ON DELETE CASCADE,
  CONSTRAINT fk_review_votes_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE admin_actions (
  action_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  user_id int(10) unsigned DEFAULT NULL,
  action_type int(11) NOT NULL DEFAULT 0,
  report_id int(10) unsigned DEFAULT NULL,
  review_id int(10) unsigned DEFAULT NULL,
  image_id int(10) unsigned DEFAULT NULL,
  details longtext DEFAULT NULL CHECK (json_valid(details)),
  created_at datetime DEFAULT current_timestamp(),
  PRIMARY KEY (action_id),
  KEY idx_admin_actions_created_at (created_at),
  KEY idx_admin_actions_action_type (action_type),
  CONSTRAINT fk_admin_actions_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE SET NULL,
  CONSTRAINT fk_admin_actions_report_id FOREIGN KEY (report_id) REFERENCES image_reports (report_id) ON DELETE SET NULL,
  CONSTRAINT fk_admin_actions_review_id FOREIGN KEY (review_id) REFERENCES image_reviews (review_id) ON DELETE SET NULL,
  CONSTRAINT fk_admin_actions_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE image_status_history (
  id int(10) unsigned NOT NULL AUTO_INCREMENT,
  image_id int(10) unsigned NOT NULL,
  old_status int(11) NOT NULL,
  new_status int(11) NOT NULL,
  user_id int(10) unsigned DEFAULT NULL,
  created_at datetime DEFAULT current_timestamp(),
  reason_category int(11) DEFAULT NULL,
  reason varchar(1000) DEFAULT NULL,
  report_id int(10) unsigned DEFAULT NULL,
  review_id int(10) unsigned DEFAULT NULL,
  PRIMARY KEY (id),
  CONSTRAINT fk_image_status_history_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE,
  CONSTRAINT fk_image_status_history_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_status_history_report_id FOREIGN KEY (report_id) REFERENCES image_reports (report_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_status_history_review_id FOREIGN KEY (review_id) REFERENCES image_reviews (review_id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
