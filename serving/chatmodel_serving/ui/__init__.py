"""The playground's static files (index.html, app.js, style.css), served at / by api/playground.py."""
