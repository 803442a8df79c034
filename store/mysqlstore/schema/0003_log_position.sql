-- Where the binlog reader resumes: one row (id 1), written in the transaction that records
-- each batch of messages it delivered, so that the position never runs ahead of the marks.
CREATE TABLE IF NOT EXISTS {{.Related "log_position"}} (
    id         TINYINT      NOT NULL PRIMARY KEY,
    gtid_set   TEXT         NOT NULL, -- MariaDB: the last GTID read in each domain (gtid_binlog_pos form)
    file       VARCHAR(255) NOT NULL, -- binlog file and offset after the last transaction read
    pos        BIGINT       NOT NULL,
    updated_at DATETIME(6)  NOT NULL
) ENGINE = InnoDB;
