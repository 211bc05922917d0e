# Dates as US patients read them: "December 8, 2026, 5:30 AM".
DATE_FORMAT = "F j, Y"
SHORT_DATE_FORMAT = "M j, Y"
DATETIME_FORMAT = "F j, Y, g:i A"
