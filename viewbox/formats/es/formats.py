# Dates as Spanish readers expect them: "8 de diciembre de 2026, 17:30".
DATE_FORMAT = r"j \d\e F \d\e Y"
SHORT_DATE_FORMAT = r"j b Y"
DATETIME_FORMAT = r"j \d\e F \d\e Y, H:i"
