"""Third-party files shipped inside ferjax so that `ferjax.analyze` works with no configuration.

See NOTICE.md beside this file for each file's origin, licence and sha256.
"""
