-- Synthetic protected health information for the quickstart and the integration tests.
--
-- Every name, number and diagnosis here is made up and generated deterministically (no
-- random()), so two loads give identical tables and tests can compare outputs exactly.
-- Load into the PHI database (clinic) as its owner or a superuser:
--     psql -d clinic -f deploy/phi_schema.sql
-- The NOLOGIN roles phi_read and phi_write must exist (they are cluster-wide; the cluster
-- setup in tests/lib/pgcluster.sh creates them). Ephemeral roles minted by sallyport become
-- members of these roles according to [role] db_roles.

BEGIN;

CREATE TABLE patients (
    id          integer PRIMARY KEY,
    mrn         text NOT NULL UNIQUE,      -- medical record number
    given_name  text NOT NULL,
    family_name text NOT NULL,
    birth_date  date NOT NULL,
    sex         char(1) NOT NULL CHECK (sex IN ('F', 'M', 'X')),
    postal_code text NOT NULL,
    phone       text NOT NULL
);

CREATE TABLE encounters (
    id             integer PRIMARY KEY,
    patient_id     integer NOT NULL REFERENCES patients (id),
    started_at     timestamptz NOT NULL,
    kind           text NOT NULL,
    diagnosis_code text NOT NULL,          -- ICD-10-shaped, not real coding
    note           text NOT NULL
);
CREATE INDEX encounters_patient_idx ON encounters (patient_id);

INSERT INTO patients
SELECT i,
       'MRN' || lpad(i::text, 7, '0'),
       (ARRAY['Ada', 'Ben', 'Chloe', 'Dev', 'Elena', 'Farid', 'Grace', 'Hiro', 'Ines',
              'Jonas', 'Kemi', 'Luis', 'Mara', 'Noor', 'Olu', 'Priya'])[1 + i % 16],
       (ARRAY['Abbott', 'Barros', 'Chen', 'Dubois', 'Eze', 'Fischer', 'Garcia', 'Haddad',
              'Ivanova', 'Jensen', 'Kowalski', 'Larsen', 'Moreau', 'Nakamura', 'Okafor',
              'Petrov', 'Quinn'])[1 + (i * 7) % 17],
       date '1930-01-01' + ((i * 7919) % 32000),
       (ARRAY['F', 'M', 'X'])[1 + (i * 13) % 3],
       lpad(((i * 104729) % 99999)::text, 5, '0'),
       '555-' || lpad(((i * 2654435761) % 10000000)::text, 7, '0')
FROM generate_series(1, 2000) AS i;

INSERT INTO encounters
SELECT e,
       1 + (e * 31) % 2000,
       timestamptz '2024-01-01 08:00:00+00' + make_interval(mins => e * 97),
       (ARRAY['outpatient', 'inpatient', 'emergency', 'telehealth'])[1 + e % 4],
       (ARRAY['J06.9', 'E11.9', 'I10', 'M54.5', 'F41.1', 'K21.9', 'R51', 'Z00.00'])[1 + (e * 5) % 8],
       'synthetic note ' || e || ': ' ||
       (ARRAY['follow-up in two weeks', 'labs ordered', 'prescription renewed',
              'referred to specialist', 'no acute distress'])[1 + (e * 3) % 5]
FROM generate_series(1, 6000) AS e;

GRANT SELECT ON patients, encounters TO phi_read;
GRANT SELECT, INSERT, UPDATE ON patients, encounters TO phi_write;

ANALYZE patients;
ANALYZE encounters;

COMMIT;
