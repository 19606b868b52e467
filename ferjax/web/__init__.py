"""The live web page served by `ferjax.serve` at `/` (index.html + app.js)."""
