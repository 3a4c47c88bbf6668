"""What a result becomes for people and archives: the overlay image and the PDF report."""
