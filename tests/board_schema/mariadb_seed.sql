-- The board's tables that fleet touches, as shuushuu-api's MariaDB migrations left them at
-- c2149d2 (2025-12-01, alembic d1e2f3a4b5c6: the board as fleet's seed plan saw it), written
-- from docs/board.md §5. Against HEAD: images has no r2_location, iqdb_hash, has_*,
-- reason_category, status_reason or source_url, and still has useragent, last_updated,
-- image_source, artist, characters, reviewed and change_id (board.md gives their names, not
-- their types: the types below are plain nullable ones, and fleet never touches them);
-- ip is varchar(15), medium/large tinyint(1), original_filename varchar(120); image_reviews has
-- review_type where HEAD has reason_category, and no closed_by or reason; review_votes.comment
-- is text; legacy tables are utf8mb3; there is no image_status_history and no trigger.
CREATE TABLE users (
  user_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  username varchar(30) NOT NULL,
  PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci;

CREATE TABLE image_reports (
  report_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  PRIMARY KEY (report_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE images (
  image_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  user_id int(10) unsigned NOT NULL,
  date_added datetime DEFAULT current_timestamp(),
  ip varchar(15) NOT NULL,
  useragent varchar(255) DEFAULT NULL,
  status_user_id int(10) unsigned DEFAULT NULL,
  status_updated datetime DEFAULT NULL,
  status tinyint(2) NOT NULL DEFAULT 1,
  locked tinyint(1) NOT NULL DEFAULT 0,
  last_post datetime DEFAULT NULL,
  last_updated datetime DEFAULT NULL,
  filename varchar(120) DEFAULT NULL,
  ext varchar(10) NOT NULL,
  md5_hash varchar(32) NOT NULL DEFAULT '',
  original_filename varchar(120) DEFAULT NULL,
  filesize int(9) unsigned NOT NULL DEFAULT 0,
  width smallint(6) unsigned NOT NULL DEFAULT 0,
  height smallint(6) unsigned NOT NULL DEFAULT 0,
  total_pixels decimal(6,3) unsigned DEFAULT NULL,
  medium tinyint(1) NOT NULL DEFAULT 0,
  large tinyint(1) NOT NULL DEFAULT 0,
  posts smallint(4) unsigned NOT NULL DEFAULT 0,
  favorites smallint(4) unsigned NOT NULL DEFAULT 0,
  caption varchar(35) NOT NULL DEFAULT '',
  image_source varchar(255) DEFAULT NULL,
  artist varchar(255) DEFAULT NULL,
  characters varchar(255) DEFAULT NULL,
  miscmeta varchar(255) DEFAULT NULL,
  rating float NOT NULL DEFAULT 0,
  bayesian_rating float NOT NULL DEFAULT 0,
  num_ratings int(4) unsigned NOT NULL DEFAULT 0,
  reviewed tinyint(1) DEFAULT NULL,
  change_id int(10) unsigned DEFAULT NULL,
  replacement_id int(10) unsigned DEFAULT NULL,
  PRIMARY KEY (image_id),
  KEY idx_status (status),
  KEY idx_bayesian_rating (bayesian_rating),
  CONSTRAINT fk_images_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE ON UPDATE CASCADE,
  CONSTRAINT fk_images_status_user_id FOREIGN KEY (status_user_id) REFERENCES users (user_id) ON DELETE SET NULL ON UPDATE CASCADE,
  CONSTRAINT fk_images_replacement_id FOREIGN KEY (replacement_id) REFERENCES images (image_id) ON DELETE SET NULL ON UPDATE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci;

CREATE TABLE image_ratings (
  user_id int(10) unsigned NOT NULL,
  image_id int(10) unsigned NOT NULL,
  rating tinyint(2) NOT NULL DEFAULT 0,
  date datetime DEFAULT current_timestamp(),
  PRIMARY KEY (user_id, image_id),
  KEY idx_image_ratings_image_id (image_id),
  CONSTRAINT fk_image_ratings_user_id FOREIGN KEY (user_id) REFERENCES users (user_id) ON DELETE CASCADE,
  CONSTRAINT fk_image_ratings_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci;

CREATE TABLE image_reviews (
  review_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  image_id int(10) unsigned NOT NULL,
  source_report_id int(10) unsigned DEFAULT NULL,
  initiated_by int(10) unsigned DEFAULT NULL,
  review_type int(11) NOT NULL DEFAULT 1,
  deadline datetime DEFAULT NULL,
  extension_used int(11) NOT NULL DEFAULT 0,
  status int(11) NOT NULL DEFAULT 0,
  outcome int(11) NOT NULL DEFAULT 0,
  created_at datetime DEFAULT current_timestamp(),
  closed_at datetime DEFAULT NULL,
  PRIMARY KEY (review_id),
  KEY idx_image_reviews_status (status),
  KEY idx_image_reviews_deadline (deadline),
  CONSTRAINT fk_image_reviews_image_id FOREIGN KEY (image_id) REFERENCES images (image_id) ON DELETE CASCADE,
  CONSTRAINT fk_image_reviews_source_report_id FOREIGN KEY (source_report_id) REFERENCES image_reports (report_id) ON DELETE SET NULL,
  CONSTRAINT fk_image_reviews_initiated_by FOREIGN KEY (initiated_by) REFERENCES users (user_id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE review_votes (
  vote_id int(10) unsigned NOT NULL AUTO_INCREMENT,
  image_id int(10) unsigned DEFAULT NULL,
  user_id int(10) unsigned DEFAULT NULL,
  vote tinyint(1) DEFAULT NULL,
  review_id int(10) unsigned DEFAULT NULL,
  comment text CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci DEFAULT NULL,
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
