from django.urls import path

from viewbox.ingest import views

app_name = "ingest"

urlpatterns = [
    path("dicomweb/studies", views.store_studies, name="stow"),
    path("dicomweb/studies/<str:study>", views.store_studies, name="stow_study"),
]
