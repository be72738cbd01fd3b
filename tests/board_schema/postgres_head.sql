-- The board's tables that fleet touches, as shuushuu-api's frozen PostgreSQL baseline
-- (alembic_pg 0001_pg_baseline.sql, 2026-08; the board runs PostgreSQL 18) has them, written
-- from docs/board.md §1. The baseline was generated from the models: NOT NULL columns have NO
-- server default (only serial keys and CURRENT_TIMESTAMP timestamps do), so an INSERT must give
-- every value. idx_r2_location and the unique (review_id, user_id) on review_votes are absent.
CREATE TABLE users (
  user_id serial PRIMARY KEY,
  username character varying(30) NOT NULL
);

CREATE TABLE image_reports (
  report_id serial PRIMARY KEY
);

CREATE TABLE images (
  image_id serial PRIMARY KEY,
  user_id integer NOT NULL REFERENCES users (user_id) ON DELETE CASCADE ON UPDATE CASCADE,
  date_added timestamp without time zone DEFAULT CURRENT_TIMESTAMP,
  ip character varying(45) NOT NULL,
  status_user_id integer REFERENCES users (user_id) ON DELETE SET NULL ON UPDATE CASCADE,
  status_updated timestamp without time zone,
  status integer NOT NULL,
  locked integer NOT NULL,
  last_post timestamp without time zone,
  filename character varying(120),
  ext character varying(10) NOT NULL,
  md5_hash character varying(32) NOT NULL,
  original_filename character varying(255),
  filesize integer NOT NULL,
  width integer NOT NULL,
  height integer NOT NULL,
  total_pixels numeric,
  medium integer NOT NULL,
  large integer NOT NULL,
  posts integer NOT NULL,
  favorites integer NOT NULL,
  caption character varying(35) NOT NULL,
  miscmeta character varying(255),
  rating double precision NOT NULL,
  bayesian_rating double precision NOT NULL,
  num_ratings integer NOT NULL,
  replacement_id integer REFERENCES images (image_id) ON DELETE SET NULL ON UPDATE CASCADE,
  r2_location integer NOT NULL,
  iqdb_hash character varying(533),
  has_theme boolean NOT NULL,
  has_source boolean NOT NULL,
  has_artist boolean NOT NULL,
  has_character boolean NOT NULL,
  reason_category integer,
  status_reason character varying(1000),
  source_url character varying(2000)
);
CREATE INDEX idx_status ON images (status);
CREATE INDEX idx_bayesian_rating ON images (bayesian_rating);

CREATE TABLE image_ratings (
  user_id integer NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
  image_id integer NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
  rating integer NOT NULL,
  date timestamp without time zone DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (user_id, image_id)
);
CREATE INDEX idx_image_ratings_image_id ON image_ratings (image_id);

CREATE TABLE image_reviews (
  review_id serial PRIMARY KEY,
  image_id integer NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
  source_report_id integer REFERENCES image_reports (report_id) ON DELETE SET NULL,
  initiated_by integer REFERENCES users (user_id) ON DELETE SET NULL,
  reason_category integer NOT NULL,
  deadline timestamp without time zone,
  extension_used integer NOT NULL,
  status integer NOT NULL,
  outcome integer NOT NULL,
  created_at timestamp without time zone DEFAULT CURRENT_TIMESTAMP,
  closed_at timestamp without time zone,
  closed_by integer REFERENCES users (user_id) ON DELETE SET NULL,
  reason character varying(1000)
);
CREATE INDEX idx_image_reviews_status ON image_reviews (status);
CREATE INDEX idx_image_reviews_deadline ON image_reviews (deadline);

CREATE TABLE review_votes (
  vote_id serial PRIMARY KEY,
  image_id integer REFERENCES images (image_id) ON DELETE CASCADE,
  user_id integer REFERENCES users (user_id) ON DELETE CASCADE,
  vote integer,
  review_id integer REFERENCES image_reviews (review_id) ON DELETE CASCADE,
  comment character varying,
  created_at timestamp without time zone DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_review_votes_image_user ON review_votes (image_id, user_id);

CREATE TABLE admin_actions (
  action_id serial PRIMARY KEY,
  user_id integer REFERENCES users (user_id) ON DELETE SET NULL,
  action_type integer NOT NULL,
  report_id integer REFERENCES image_reports (report_id) ON DELETE SET NULL,
  review_id integer REFERENCES image_reviews (review_id) ON DELETE SET NULL,
  image_id integer REFERENCES images (image_id) ON DELETE SET NULL,
  details json,
  created_at timestamp without time zone DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_admin_actions_created_at ON admin_actions (created_at);
CREATE INDEX idx_admin_actions_action_type ON admin_actions (action_type);

CREATE TABLE image_status_history (
  id serial PRIMARY KEY,
  image_id integer NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
  old_status integer NOT NULL,
  new_status integer NOT NULL,
  user_id integer REFERENCES users (user_id) ON DELETE SET NULL,
  created_at timestamp without time zone DEFAULT CURRENT_TIMESTAMP,
  reason_category integer,
  reason character varying(1000),
  report_id integer REFERENCES image_reports (report_id) ON DELETE SET NULL,
  review_id integer REFERENCES image_reviews (review_id) ON DELETE SET NULL
);
