"""The code behind ``docbus bench``: measurements, never assertions about speed."""
